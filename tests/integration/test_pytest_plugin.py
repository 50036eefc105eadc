"""labctl's pytest plugin, used the way a lab author uses it: inner pytest sessions
(pytester, in their own processes) whose `lab` fixtures bring real labs up — and always
take them down: after a failing test, a topology that does not load, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labctl.lab import store
from labctl.testing.lab import Endpoint, Lab, running
from labctl.testing.packets import assert_dnat, assert_packet
from labctl.testing.runner import labctl, leftovers

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]

LAB = """\
apiVersion: labctl/v1
kind: Lab
spec:
  nodes: [{name: node1}, {name: node2}]
---
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: a}}
spec:
  nodeName: node1
  containers:
    - name: c
      ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 9053, protocol: UDP}]
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec:
  nodeName: node2
  containers: [{name: c}]
---
apiVersion: v1
kind: Service
metadata: {name: a}
spec:
  selector: {app: a}
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, targetPort: 9053, protocol: UDP}
"""

BAD_LAB = LAB.replace("targetPort: 8080", "targetPort: 80800")
assert BAD_LAB != LAB


@pytest.fixture(scope="module")
def small_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    path = tmp_path_factory.mktemp("pp-plug-handle") / "lab.yaml"
    path.write_text(LAB)
    with running([path], "pp-plug-handle") as lab:
        yield lab


def test_the_handle_finds_and_reaches_everything(small_lab: Lab) -> None:
    lab = small_lab
    a, b, svc = lab.pod("a"), lab.pod("b"), lab.service("a")
    assert (a.node, b.node) == ("node1", "node2") and lab.netns("a") == a.netns
    assert lab.address("node2") == lab.node("node2").ip
    assert lab.address("external") == lab.external_ip
    assert [p.name for p in lab.pods({"app": "a"})] == ["a"]
    assert lab.endpoints("a") == [Endpoint(a.ip, "a", "node1", True, True, False,
                                           {"http": 8080, "dns": 9053})]
    shown = lab.exec("a", ["ip", "-4", "-o", "addr", "show", "eth0"])
    assert shown.returncode == 0 and f" {a.ip}/" in shown.stdout
    assert f"A_SERVICE_HOST={svc.cluster_ip}" in lab.exec("b", ["env"]).stdout
    assert lab.http_get("b", "a").pod == "a"
    assert lab.udp("b", "a", 53).pod == "a"
    assert lab.dns("b", "a.default.svc.cluster.local").answers == [svc.cluster_ip]
    assert lab.dns("b", "nope.default.svc.cluster.local").rcode == "NXDOMAIN"
    assert "default/a:http" in lab.rules("node2", service="default/a")
    [udp] = lab.conntrack("node2", proto="udp", src=b.ip, dst=svc.cluster_ip, dport=53)
    assert udp.dnat and (udp.reply.src, udp.reply.sport) == (a.ip, 9053)


def test_captures_on_a_node_bridge_and_crafted_packets(small_lab: Lab) -> None:
    from scapy.layers.inet import ICMP, IP

    lab = small_lab
    a, b, vip = lab.pod("a"), lab.pod("b"), lab.service("a").cluster_ip
    with lab.capture("node2", iface="cni0") as bridge:
        reply = lab.http_get("b", "a")
    # br_netfilter runs the nat PREROUTING hook inside the bridge, so on b's node's cni0
    # the SYN already goes to the pod, while the replies leave it from the VIP
    sport = reply.local[1]
    assert_dnat(bridge.packets, to=f"{a.ip}:8080", src=f"{b.ip}:{sport}", flags="S",
                original=f"{vip}:80")
    assert_packet(bridge.packets, src=f"{vip}:80", dst=f"{b.ip}:{sport}", flags="SA")
    with lab.capture("a", match=lambda p: p.haslayer(ICMP)) as seen:
        echo = lab.sr1("b", IP(dst=a.ip) / ICMP(id=4242))
    assert echo is not None and echo[IP].src == a.ip and echo[ICMP].type == 0
    assert_packet(seen.packets, src=b.ip, dst=a.ip)
    with lab.capture("a", match=lambda p: p.haslayer(ICMP), count=1, timeout=3) as spoofed:
        lab.send("b", IP(src="10.244.1.99", dst=a.ip) / ICMP(id=4243))
    assert_packet(spoofed.stop(), src="10.244.1.99", dst=a.ip)  # a source set is kept


def inner_module(pytester: pytest.Pytester, name: str, tests: str, lab: str = LAB) -> None:
    """An inner session's lab.yaml and test_inner.py, whose module is marked with the lab."""
    pytester.makefile(".yaml", lab=lab)
    pytester.makepyfile(test_inner="import pathlib, os, time\nimport pytest\n\n"
                        f"pytestmark = pytest.mark.lab('lab.yaml', name={name!r})\n\n"
                        + textwrap.dedent(tests))


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=180)


def test_a_failing_test_still_takes_its_lab_down(pytester: pytest.Pytester) -> None:
    inner_module(pytester, "pp-plug-fail", """
        def test_fails_on_purpose(lab):
            assert os.path.exists("/run/netns/" + lab.pod("a").netns)
            assert lab.http_get("a", "a").pod == "a"
            raise AssertionError("deliberate failure after the lab answered")
    """)
    result = run_inner(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*deliberate failure after the lab answered*"])
    assert leftovers(["pp-plug-fail"]) == {}


def test_a_topology_that_does_not_load_is_a_clear_setup_error(
        pytester: pytest.Pytester) -> None:
    inner_module(pytester, "pp-plug-bad", """
        def test_never_runs(lab):
            raise AssertionError("the body ran")
    """, lab=BAD_LAB)
    result = run_inner(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*lab 'pp-plug-bad' from *lab.yaml did not come up*",
                                 "*lab.yaml:*:*targetPort*"])
    result.stdout.no_fnmatch_line("*the body ran*")
    assert leftovers(["pp-plug-bad"]) == {}


@pytest.mark.parametrize("during", ["setup", "test"])
def test_ctrl_c_takes_the_lab_down(pytester: pytest.Pytester, during: str) -> None:
    """Ctrl-C while `labctl up` is building the lab (as soon as its state dir exists),
    or while a test runs."""
    flag = Path(store.state_dir("pp-plug-int")) if during == "setup" else (
        pytester.path / "lab-is-up")
    inner_module(pytester, "pp-plug-int", f"""
        def test_waits_for_ctrl_c(lab):
            pathlib.Path({str(flag)!r}).write_text(lab.pod("a").ip)
            time.sleep(60)
    """)
    # Its own process group, signalled as a terminal's Ctrl-C signals every process in it.
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "test_inner.py"], cwd=pytester.path, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert flag.exists(), f"the inner session never reached its {during}"
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "KeyboardInterrupt" in out
    assert leftovers(["pp-plug-int"]) == {}


def test_a_test_with_its_own_marker_gets_its_own_lab(pytester: pytest.Pytester) -> None:
    """The module's lab serves its tests; a test marked with another topology gets a lab
    of its own (its `name=`), up for it alone; both are gone afterwards."""
    pytester.makefile(".yaml", other=LAB.replace("name: a, labels: {app: a}",
                                                 "name: z, labels: {app: a}"))
    inner_module(pytester, "pp-plug-mod", """
        def test_module_lab(lab):
            assert lab.name == "pp-plug-mod" and lab.pod("a")

        @pytest.mark.lab("other.yaml", name="pp-plug-own")
        def test_own_lab(lab):
            assert lab.name == "pp-plug-own" and lab.pod("z")
            assert os.path.exists("/run/netns/" + lab.pod("z").netns)

        def test_module_lab_again(lab):
            assert lab.name == "pp-plug-mod"
    """)
    result = run_inner(pytester, "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_own_lab?pp-plug-own? PASSED*"])
    assert leftovers(["pp-plug-mod", "pp-plug-own"]) == {}


def test_keep_leaves_the_lab_up_and_a_second_run_refuses_to_touch_it(
        pytester: pytest.Pytester) -> None:
    inner_module(pytester, "pp-plug-keep", """
        def test_up(lab):
            assert lab.http_get("a", lab.pod("a").ip, 8080).pod == "a"
    """)
    try:
        result = run_inner(pytester, "--labctl-keep")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["*left up (--labctl-keep): pp-plug-keep*"])
        assert store.load("pp-plug-keep") is not None
        again = run_inner(pytester)
        again.assert_outcomes(errors=1)
        again.stdout.fnmatch_lines(["*'pp-plug-keep' is already up (not brought up by this*"])
        assert store.load("pp-plug-keep") is not None  # not ours to take down
    finally:
        labctl("down", "pp-plug-keep", check=False)
    assert leftovers(["pp-plug-keep"]) == {}


def test_modes_run_the_module_once_per_proxy_mode(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", lab=LAB)
    pytester.makepyfile(test_inner="""
        import pytest

        pytestmark = pytest.mark.lab("lab.yaml", name="pp-plug-mode",
                                     modes=["iptables", "nftables"])

        def test_serves(lab):
            assert lab.http_get("b", "a").pod == "a"
            mode = lab.state.lab.proxy_mode
            shown = lab.rules("node2", service="default/a")
            assert ("KUBE-SVC-" if mode == "iptables" else "numgen random mod 1") in shown
            with open("seen", "a") as f:
                f.write(f"{lab.name} {mode}\\n")

        def test_second(lab):
            pass
    """)
    result = run_inner(pytester, "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*test_serves?iptables? PASSED*", "*test_second?iptables? *",
                                 "*test_serves?nftables? PASSED*", "*test_second?nftables? *"])
    seen = (pytester.path / "seen").read_text().splitlines()
    assert seen == ["pp-plug-mode-ipt iptables", "pp-plug-mode-nft nftables"]
    assert leftovers(["pp-plug-mode-ipt", "pp-plug-mode-nft"]) == {}


def test_a_session_lab_is_brought_up_once_for_every_module(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", lab=LAB)
    pytester.makeconftest("""
        import pytest

        @pytest.fixture(scope="session")
        def session_lab_name():
            return "pp-plug-sess"
    """)
    body = """
        from labctl.lab import store

        def test_uses_the_session_lab(session_lab):
            assert session_lab.name == "pp-plug-sess"
            with open("created", "a") as f:
                f.write(f"{store.load(session_lab.name).created}\\n")
    """
    pytester.makepyfile(test_one=body, test_two=body)
    result = run_inner(pytester, "--labctl-lab", "lab.yaml")
    result.assert_outcomes(passed=2)
    created = (pytester.path / "created").read_text().split()
    assert len(created) == 2 and created[0] == created[1]
    assert leftovers(["pp-plug-sess"]) == {}


def test_the_readme_example_passes(pytester: pytest.Pytester) -> None:
    result = run_inner(pytester, str(REPO / "examples" / "test_my_lab.py"),
                       f"--rootdir={REPO}")
    result.assert_outcomes(passed=3)
    assert leftovers(["pp-example"]) == {}
