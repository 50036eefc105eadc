"""What up, down and apply print, on a real lab: `-o json` is one JSON object on stdout
whose addresses carry real traffic, `--quiet` prints nothing, the summary and the phase
lines name what was built, and on a terminal `up` draws a progress bar for a long lab.

The labs here are named vo-… (not it-…) and this module cleans them up itself."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labctl.testing.runner import labctl, labctl_argv, leftovers
from labctl.testing.traffic import http_get
from tests.integration.conftest import write_lab
from tests.integration.manifests import deployment, join, lab, pod, service

LAB = "vo-out"
BIG = "vo-out-big"
BASE = join(lab(LAB), deployment("web", 2, port_name="http"),
            service("web", "web", 80, "http", node_port=30080, type="NodePort"),
            pod("client"))
CLIENT = f"lc.{LAB}.pod.default.client"
KEYS = ["apiVersion", "kind", "command", "lab", "proxyMode", "counts", "timings", "nodes",
        "pods", "services", "dns", "changes"]


@pytest.fixture(scope="module", autouse=True)
def own_labs_cleaned() -> Iterator[None]:
    yield
    left = leftovers([LAB, BIG])
    for name in (LAB, BIG):
        labctl("down", name, "-q", check=False)
    assert not left, f"labs left objects behind: {left}"


def report(*args: str) -> dict:
    proc = labctl(*args, "-o", "json")
    doc = json.loads(proc.stdout)  # stdout is the JSON object and nothing else
    assert list(doc)[:len(KEYS)] == KEYS
    assert proc.stderr == ""  # no phase lines, no bar: a script reads this
    return doc


def test_up_apply_down_json(tmp_path: Path) -> None:
    base = write_lab(tmp_path, LAB, BASE)
    up = report("up", str(base))
    try:
        assert up["command"] == "up" and up["lab"] == LAB and up["adopted"] is False
        assert up["counts"] == {"nodes": 2, "pods": 5, "services": 3}
        assert list(up["timings"])[-1] == "total" and up["timings"]["compile"] > 0
        got = labctl("get", "pods", "-A", "-o", "wide", "--lab", LAB).stdout
        for p in up["pods"]:
            assert f"{p['ip']} " in got and p["name"] in got
        web = next(s for s in up["services"] if s["name"] == "web")
        assert web["ports"][0]["nodePort"] == 30080
        assert http_get(CLIENT, web["clusterIP"], 80).pod.startswith("web-")
        node2 = next(n for n in up["nodes"] if n["name"] == "node2")
        assert http_get(f"lc.{LAB}.external", node2["ip"], 30080).pod.startswith("web-")
        assert up["dns"]["clusterIP"] == "10.96.0.10" and len(up["dns"]["servers"]) == 2

        changed = tmp_path / "changed.yaml"
        changed.write_text(base.read_text().replace("port: 80,", "port: 8000,"))
        dry = report("apply", "-f", str(changed), "--dry-run", "--lab", LAB)
        assert dry["dryRun"] is True
        assert dry["changes"] == [{"object": "service/web", "action": "configured"}]
        assert next(s for s in dry["services"] if s["name"] == "web")["ports"][0]["port"] == 80

        done = report("apply", "-f", str(changed), "--lab", LAB)
        assert done["command"] == "apply" and done["dryRun"] is False
        assert done["changes"] == [{"object": "service/web", "action": "configured"}]
        web = next(s for s in done["services"] if s["name"] == "web")
        assert web["ports"][0]["port"] == 8000
        assert http_get(CLIENT, web["clusterIP"], 8000).pod.startswith("web-")

        quiet = labctl("apply", "-f", str(base), "--lab", LAB, "-q")
        assert quiet.stdout == "" and quiet.stderr == ""
        assert http_get(CLIENT, web["clusterIP"], 80).pod.startswith("web-")  # it applied
    finally:
        down = report("down", LAB)
    assert down["command"] == "down" and down["namespacesRemoved"] == 2 + 5 + 2
    assert down["counts"] == {"nodes": 0, "pods": 0, "services": 0} and down["pods"] == []
    assert leftovers([LAB]) == {}
    again = report("down", LAB)  # safe to repeat
    assert again["namespacesRemoved"] == 0


def test_summary_and_phase_lines(tmp_path: Path) -> None:
    base = write_lab(tmp_path, LAB, BASE)
    up = labctl("up", str(base))
    try:
        out = up.stdout
        assert f"lab '{LAB}' is up: 2 nodes, 5 pods, 3 services, proxy mode iptables" in out
        assert "80:30080/TCP" in out and "kube-system/kube-dns 10.96.0.10" in out
        assert "timings: compile " in out
        phases = [line.split()[0] for line in up.stderr.splitlines()]
        assert phases[:3] == ["compile", "kernel", "files"] and phases[-1] == "agent"
        assert "(9 namespaces)" in up.stderr
        assert "\r" not in up.stderr  # not a terminal: no bar
    finally:
        down = labctl("down", LAB)
    assert f"lab '{LAB}' is down (9 namespaces removed)" in down.stdout
    assert [line.split()[0] for line in down.stderr.splitlines()] == [
        "processes", "namespaces", "files"]


def run_on_terminal(argv: list[str], timeout: float = 120.0) -> tuple[int, str]:
    """Run argv with stdout and stderr on a pseudo-terminal; (exit code, all it wrote)."""
    main, sub = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sub, stderr=sub,
                            close_fds=True)
    os.close(sub)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    data = os.read(main, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=10), b"".join(chunks).decode(errors="replace")
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()


def test_a_long_lab_on_a_terminal_gets_a_progress_bar(tmp_path: Path) -> None:
    big = write_lab(tmp_path, BIG, join(lab(BIG), deployment("web", 120)))
    code, text = run_on_terminal(labctl_argv("up", str(big)))
    try:
        assert code == 0, text
        assert "namespaces [" in text and "/126" in text  # 120 + 2 coredns + 2 nodes + 2
        assert "\r\033[K" in text  # the bar was wiped before the phase line
        assert "(126 namespaces)" in text
    finally:
        labctl("down", BIG, "-q")
