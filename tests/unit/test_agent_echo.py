"""The echo protocols on 127.0.0.1 (no namespaces): HTTP vs raw lines vs UDP."""

from __future__ import annotations

import asyncio
import socket

import pytest

from labctl.kubelet import echo

IDENT = echo.Identity(pod="web-abc", namespace="default", node="node1", ip="10.244.1.2",
                      container="web")


def test_sniff_decides_http_only_on_method_and_space():
    assert echo.sniff(b"GET / HTTP/1.1\r\n") == "http"
    assert echo.sniff(b"OPTIONS * HTTP/1.1") == "http"
    assert echo.sniff(b"hi\n") == "raw"
    assert echo.sniff(b"GET/") == "raw"
    assert echo.sniff(b" GET /") == "raw"
    assert echo.sniff(b"HELLO\n") == "raw"
    assert echo.sniff(b"GE") is None  # could still become "GET "
    assert echo.sniff(b"") is None
    assert echo.sniff(b"A" * 21) == "raw"


def test_line_reply_and_parse_back():
    line = echo.line_reply(IDENT, "10.244.1.2:8080", "10.250.0.1:40000", b"hello world")
    assert line == (b"pod=web-abc namespace=default node=node1 ip=10.244.1.2 container=web "
                    b"server=10.244.1.2:8080 client=10.250.0.1:40000 echo=hello world\n")
    f = echo.parse_fields(line.decode())
    assert f["echo"] == "hello world" and f["client"] == "10.250.0.1:40000"


def test_http_body_lines():
    body = echo.http_body(IDENT, "10.244.1.2:8080", "10.250.0.1:1", "/x").decode()
    assert body.splitlines() == [
        "pod=web-abc", "namespace=default", "node=node1", "ip=10.244.1.2", "container=web",
        "server=10.244.1.2:8080", "client=10.250.0.1:1", "path=/x"]


def test_parse_head_and_keep_alive_rules():
    req = echo.parse_head(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive")
    assert (req.method, req.path, req.version) == ("GET", "/a?b=1", "HTTP/1.1")
    assert req.headers["host"] == "x" and req.keep_alive
    assert not echo.parse_head(b"GET / HTTP/1.1\r\nConnection: close").keep_alive
    assert not echo.parse_head(b"GET / HTTP/1.0").keep_alive
    assert echo.parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive").keep_alive
    assert echo.parse_head(b"GET http://h:1/p/q HTTP/1.1").path == "/p/q"
    for bad in (b"GET /", b"GET / FTP/1", b"GET / HTTP/1.1\r\nno colon"):
        with pytest.raises(echo.BadRequest):
            echo.parse_head(bad)


def test_hostport():
    assert echo.hostport(("10.0.0.1", 80)) == "10.0.0.1:80"
    assert echo.hostport(("::1", 80, 0, 0)) == "[::1]:80"
    assert echo.hostport(None) == "?"


# --- the protocol classes, driven over real loopback sockets ---------------------------


async def _serve_tcp(log: list[str]):
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    conns: set[echo.TcpEcho] = set()
    server = await loop.create_server(lambda: echo.TcpEcho(IDENT, log.append, conns), sock=sock)
    return server, sock.getsockname()[1], conns


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    body = await reader.readexactly(int(headers["Content-Length"]))
    return lines[0].encode(), headers, body


def test_tcp_http_keep_alive_pipelining_and_close():
    log: list[str] = []

    async def main():
        server, port, conns = await _serve_tcp(log)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        local = "{}:{}".format(*writer.get_extra_info("sockname"))
        writer.write(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"POST /two HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
                     b"HEAD /three HTTP/1.1\r\n\r\n")
        status, headers, body = await _read_response(reader)
        assert status == b"HTTP/1.1 200 OK"
        assert headers["Content-Type"] == "text/plain"
        assert "Connection" not in headers
        f = echo.parse_fields(body.decode())
        assert f == {"pod": "web-abc", "namespace": "default", "node": "node1",
                     "ip": "10.244.1.2", "container": "web", "server": f"127.0.0.1:{port}",
                     "client": local, "path": "/one"}
        _, _, body = await _read_response(reader)
        assert b"path=/two\n" in body
        head = await reader.readuntil(b"\r\n\r\n")  # HEAD: headers only
        assert b"Content-Length: " in head
        writer.write(b"GET /last HTTP/1.1\r\nConnection: close\r\n\r\n")
        _, headers, body = await _read_response(reader)
        assert headers["Connection"] == "close" and b"path=/last" in body
        assert await reader.read() == b""  # the server closed
        writer.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0)
        assert not conns

    asyncio.run(main())
    assert sum("http " in line and '" 200' in line for line in log) == 4


def test_tcp_http_1_0_closes_and_bad_request_gets_400():
    async def main():
        server, port, _ = await _serve_tcp([])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /old HTTP/1.0\r\n\r\n")
        data = await reader.read()  # HTTP/1.0 without keep-alive: closed after one
        assert data.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in data
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET nonsense\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400 Bad Request")
        writer.close()
        server.close()

    asyncio.run(main())


def test_tcp_raw_lines_and_last_line_without_newline():
    log: list[str] = []

    async def main():
        server, port, _ = await _serve_tcp(log)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        local = "{}:{}".format(*writer.get_extra_info("sockname"))
        writer.write(b"hi there\r\nsec")
        await writer.drain()
        first = echo.parse_fields((await reader.readline()).decode())
        assert first["echo"] == "hi there" and first["client"] == local
        assert first["server"] == f"127.0.0.1:{port}" and first["pod"] == "web-abc"
        writer.write(b"ond\nthird")
        writer.write_eof()
        rest = (await reader.read()).decode().splitlines()
        assert [echo.parse_fields(line)["echo"] for line in rest] == ["second", "third"]
        writer.close()
        server.close()

    asyncio.run(main())
    assert len([line for line in log if line.startswith("tcp ")]) == 3


def test_shutdown_closes_idle_connections():
    async def main():
        server, port, conns = await _serve_tcp([])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        await _read_response(reader)
        assert len(conns) == 1
        for c in list(conns):
            c.shutdown()
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        server.close()

    asyncio.run(main())


def test_udp_echo_datagrams():
    log: list[str] = []

    async def main():
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", 0))
        sock.setblocking(False)
        port = sock.getsockname()[1]
        transport, _ = await loop.create_datagram_endpoint(
            lambda: echo.UdpEcho(IDENT, log.append), sock=sock)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        client.connect(("127.0.0.1", port))
        local = "{}:{}".format(*client.getsockname())
        for payload in (b"one\n", b"two"):
            await loop.sock_sendall(client, payload)
            f = echo.parse_fields((await asyncio.wait_for(loop.sock_recv(client, 65536),
                                                          2)).decode())
            assert f["echo"] == payload.decode().strip()
            assert f["client"] == local
            assert f["server"] == f"10.244.1.2:{port}"  # 0.0.0.0 → the pod IP
        client.close()
        transport.close()

    asyncio.run(main())
    assert len(log) == 2 and log[0].startswith("udp 127.0.0.1:")
