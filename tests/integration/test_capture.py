"""`labctl capture` inside a lab (tcpdump in the pod's or node's namespace; pcaps read
back with scapy), and the running lab seen by `labctl graph` and shell completion."""

from __future__ import annotations

import io
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labctl.testing.runner import labctl, labctl_argv
from tests.integration import manifests as m
from tests.integration.conftest import only_own_labs, write_lab

LAB = "it-capture"
READY_WAIT = 60.0  # seconds: the machine may be loaded
RUN_LIMIT = 120.0


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """This module's lab leaves nothing behind (and other sessions' labs are left alone)."""
    yield from only_own_labs(LAB)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("capture")
    path = write_lab(tmp, LAB, m.join(
        m.lab(LAB),
        m.deployment("web", 1),
        m.service("web", "web", 80, 8080),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client}\n"
        "spec:\n  nodeName: node1\n  containers: [{name: c}]\n"))
    labctl("down", LAB, check=False)
    try:
        labctl("up", str(path))
        pods = json.loads(labctl("get", "pods", "-o", "json", "--lab", LAB).stdout)["items"]
        info = {p["metadata"]["name"]: p for p in pods}
        web = next(name for name in info if name.startswith("web-"))
        yield {"web": web, "web_ip": info[web]["status"]["podIP"],
               "web_node": info[web]["spec"]["nodeName"],
               "client_ip": info["client"]["status"]["podIP"]}
    finally:
        labctl("down", LAB, check=False)


class Capture:
    """`labctl capture …` running in the background; `listening()` waits for tcpdump's
    "listening on" line, so traffic sent afterwards is seen."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(labctl_argv("capture", "--lab", LAB, *args),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self.stderr.append(line)
            self.lines.put(line)

    def listening(self) -> None:
        deadline = time.monotonic() + READY_WAIT
        while time.monotonic() < deadline:
            try:
                if "listening on" in self.lines.get(timeout=1):
                    return
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
        self.proc.kill()
        raise AssertionError(f"tcpdump did not start: {''.join(self.stderr)}")

    def finish(self, poke: Any = None) -> tuple[int, bytes]:
        """Call `poke` until the capture ends by itself (count or --timeout)."""
        deadline = time.monotonic() + RUN_LIMIT
        try:
            while self.proc.poll() is None and time.monotonic() < deadline:
                if poke is not None:
                    poke()
                time.sleep(0.5)
            assert self.proc.poll() is not None, "the capture did not stop by itself"
            assert self.proc.stdout is not None
            return self.proc.returncode, self.proc.stdout.read()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=30)


def curl(target: str) -> None:
    labctl("exec", "--lab", LAB, "client", "--", "curl", "-s", "-m", "5", "-o", "/dev/null",
           target, check=False)


def read_pcap(source: str | io.BytesIO) -> Any:
    from scapy.layers import inet, l2  # noqa: F401 - register Ethernet and IP for decoding
    from scapy.utils import rdpcap

    return rdpcap(source)


def syns_to(packets: Any, ip: str, port: int) -> list[Any]:
    from scapy.layers.inet import IP, TCP

    return [p for p in packets if p.haslayer(TCP) and p[TCP].flags == "S"
            and p[IP].dst == ip and p[TCP].dport == port]


def test_capture_writes_a_pcap_with_the_syn_to_the_pod(lab: dict[str, Any],
                                                       tmp_path: Path) -> None:
    out = tmp_path / "web.pcap"
    cap = Capture(lab["web"], "-c", "2", "-w", str(out), "--timeout", "90", "tcp", "port", "8080")
    cap.listening()
    code, _ = cap.finish(lambda: curl(f"http://{lab['web_ip']}:8080/"))
    assert code == 0, "".join(cap.stderr)
    packets = read_pcap(str(out))
    assert len(packets) == 2
    syn = syns_to(packets, lab["web_ip"], 8080)
    assert syn, [p.summary() for p in packets]
    from scapy.layers.inet import IP

    assert syn[0][IP].src == lab["client_ip"]  # pod to pod: no NAT


def test_capture_to_stdout_streams_a_valid_pcap(lab: dict[str, Any]) -> None:
    cap = Capture(lab["web"], "-c", "1", "-w", "-", "--timeout", "90",
                  "tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack == 0")
    cap.listening()
    code, data = cap.finish(lambda: curl(f"http://{lab['web_ip']}:8080/"))
    assert code == 0, "".join(cap.stderr)
    assert data[:4] == b"\xd4\xc3\xb2\xa1"  # the pcap magic (little endian, microseconds)
    packets = read_pcap(io.BytesIO(data))
    assert len(packets) == 1 and syns_to(packets, lab["web_ip"], 8080)


def test_a_nodes_bridge_sees_its_pods_traffic_and_timeout_stops_an_idle_capture(
        lab: dict[str, Any]) -> None:
    cap = Capture(f"{lab['web_node']}:cni0", "-c", "1", "--timeout", "90",
                  "tcp", "dst", "port", "8080")
    cap.listening()
    code, data = cap.finish(lambda: curl(f"http://{lab['web_ip']}:8080/"))
    assert code == 0, "".join(cap.stderr)
    line = data.decode()
    assert f"> {lab['web_ip']}.8080: Flags [S]" in line, line
    assert len(line.strip().splitlines()) == 1  # one line per packet, -c 1

    idle = Capture(lab["web"], "--timeout", "2", "udp", "port", "9")
    idle.listening()
    code, data = idle.finish()
    assert code == 0 and data.strip() == b""  # tcpdump ends its output with a newline
    assert "stopped after --timeout 2 s" in "".join(idle.stderr)


def test_capture_refuses_an_interface_the_target_lacks(lab: dict[str, Any]) -> None:
    proc = labctl("capture", "--lab", LAB, f"{lab['web']}:cni0", "--timeout", "5", check=False)
    assert proc.returncode == 1
    assert f"pod default/{lab['web']} has no interface 'cni0'; it has: lo, eth0" in proc.stderr
    proc = labctl("capture", "--lab", LAB, "nosuch", check=False)
    assert proc.returncode == 1 and 'pods "nosuch" not found' in proc.stderr


def test_graph_draws_the_running_lab(lab: dict[str, Any]) -> None:
    text = labctl("graph", LAB, "-o", "mermaid").stdout
    assert lab["web"] in text and lab["web_ip"] in text and "client" in text
    assert labctl("graph", "--lab", LAB, "--no-system").stdout.count(" -> ") >= 1


def test_completion_offers_the_running_lab_and_its_pods(lab: dict[str, Any]) -> None:
    def complete(words: str, cword: int) -> list[str]:
        """What `labctl __complete` (the completion scripts' question) offers."""
        args = words.split(" ")[1:cword + 1]
        proc = subprocess.run([sys.executable, "-m", "labctl.cli.main", "__complete", *args],
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        return [line.split("\t")[1] for line in proc.stdout.splitlines()]

    assert LAB in complete("labctl down ", 2)
    assert lab["web"] in complete(f"labctl exec --lab {LAB} w", 4)
