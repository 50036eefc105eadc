"""`labctl dns serve` as a real process on 127.0.0.1, asked with dig over UDP and TCP.

No namespaces are made: the server only listens on loopback (a free port), and every
query goes to it. The snapshot is the unit tests' (tests/unit/test_dns_zone.py).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_dns_zone import SNAPSHOT

pytestmark = pytest.mark.skipif(shutil.which("dig") is None,
                                reason="needs dig (Debian package dnsutils)")

S1 = "svc1.testns.svc.cluster.local"


def serve_command() -> list[str]:
    """`labctl dns serve`, through the main CLI."""
    return [sys.executable, "-m", "labctl.cli.main", "dns", "serve"]


def start(snapshot: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([*serve_command(), "-f", str(snapshot), "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
    found = re.search(r" on 127\.0\.0\.1:(\d+) ", line)
    if not found:
        stop(proc, signal.SIGKILL)
        raise AssertionError(f"labctl dns serve did not start: {line!r} "
                             f"{proc.stderr.read() if proc.stderr else ''}")
    return proc, int(found.group(1))


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


@pytest.fixture(scope="module")
def snapshot_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(tmp_path_factory.mktemp("dnsserve")) / "snapshot.yaml"
    path.write_text(SNAPSHOT)
    return path


@pytest.fixture(scope="module")
def port(snapshot_file: Path) -> Iterator[int]:
    proc, bound = start(snapshot_file)
    yield bound
    stop(proc)


def dig(port: int, transport: str, *args: str) -> str:
    result = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), transport, "+time=2",
                             "+tries=1", *args], capture_output=True, text=True, timeout=15)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


TRANSPORTS = pytest.mark.parametrize("transport", ["+notcp", "+tcp"])


@TRANSPORTS
def test_service_records(port: int, transport: str) -> None:
    assert dig(port, transport, "+short", S1).split() == ["10.96.1.1"]
    assert sorted(dig(port, transport, "+short", "hdls1.testns.svc.cluster.local").split()) == \
        [f"10.244.9.{i}" for i in (2, 3, 4, 5)]
    srv = dig(port, transport, "+short", "SRV", "_http._tcp.hdls1.testns.svc.cluster.local")
    assert sorted(srv.splitlines()) == [
        f"0 25 80 {n}.hdls1.testns.svc.cluster.local." for n in
        ("10-244-9-2", "10-244-9-3", "dup-name")]
    assert dig(port, transport, "+short", "-x", "10.96.1.1").split() == [S1 + "."]
    assert dig(port, transport, "+short", "CNAME", "ext.testns.svc.cluster.local").split() == \
        ["ext.interwebs.test."]
    assert dig(port, transport, "+short", "10-244-7-7.other.pod.cluster.local").split() == \
        ["10.244.7.7"]


@TRANSPORTS
def test_negative_answers_carry_the_soa(port: int, transport: str) -> None:
    out = dig(port, transport, "+noall", "+comments", "+authority",
              "kubernetes.default.testns.svc.cluster.local")
    assert "status: NXDOMAIN" in out and "flags: qr aa rd;" in out
    assert re.search(r"^cluster\.local\.\s+5\s+IN\s+SOA\s+ns\.dns\.cluster\.local\. "
                     r"hostmaster\.cluster\.local\.", out, re.MULTILINE)
    nodata = dig(port, transport, "+noall", "+comments", "AAAA", S1)
    assert "status: NOERROR" in nodata and "ANSWER: 0" in nodata
    outside = dig(port, transport, "+noall", "+comments", "example.org")
    assert "status: SERVFAIL" in outside  # no upstream given


def test_letter_case_is_echoed(port: int) -> None:
    out = dig(port, "+notcp", "+noall", "+answer", "SvC1.TeStNs.SvC.cLuStEr.LoCaL")
    assert re.search(r"^SvC1\.TeStNs\.SvC\.cLuStEr\.LoCaL\.\s+5\s+IN\s+A\s+10\.96\.1\.1$", out,
                     re.MULTILINE), out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_it_cleanly(snapshot_file: Path, sig: int) -> None:
    proc, bound = start(snapshot_file)
    try:
        assert dig(bound, "+tcp", "+short", S1).split() == ["10.96.1.1"]
    finally:
        code = stop(proc, sig)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 0, stderr
    assert "Traceback" not in stderr
