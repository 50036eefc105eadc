"""The guest kernel has what labctl's IPVS mode needs, shown for real.

A small network in throw-away namespaces (`vmsmoke-*`, removed afterwards):

    vmsmoke-cli ── vmsmoke-node ──────────────────────────────── vmsmoke-srv
    10.10.1.2      10.10.1.1, kube-ipvs0 10.96.0.10, 10.10.2.1   10.10.2.2:8080, :8081
                   IPVS 10.96.0.10:80 rr → both backends, NAT

Everything runs in this one interpreter (sockets are opened inside a namespace by a
thread that entered it), calling only `ip`, `ipset`, `nft`, `iptables-restore` and
`ipvsadm` as programs: a Python start costs seconds in the emulated guest.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from labctl.net import netns

pytestmark = pytest.mark.ipvs

NODE, CLI, SRV = "vmsmoke-node", "vmsmoke-cli", "vmsmoke-srv"
VIP, VPORT = "10.96.0.10", 80
BACKENDS = (("10.10.2.2", 8080), ("10.10.2.2", 8081))
FWD_MASQ = 0  # pyroute2's IPVSDest defaults to 3 (direct routing): kube-proxy uses NAT


def sh(*argv: str, ns: str | None = None, stdin: str | None = None) -> str:
    cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def ip_batch(lines: str) -> None:
    sh("ip", "-batch", "-", stdin=lines)


@pytest.fixture(scope="module")
def net() -> Iterator[None]:
    """Three namespaces: a client, a node with kube-ipvs0 and forwarding, a server."""
    for ns in (NODE, CLI, SRV):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    ip_batch("\n".join([
        f"netns add {NODE}", f"netns add {CLI}", f"netns add {SRV}",
        f"link add v-cli netns {NODE} type veth peer name eth0 netns {CLI}",
        f"link add v-srv netns {NODE} type veth peer name eth0 netns {SRV}",
    ]) + "\n")
    sh("ip", "-batch", "-", ns=NODE, stdin="\n".join([
        "link set lo up",
        "link add kube-ipvs0 type dummy",
        f"address add {VIP}/32 dev kube-ipvs0",
        "address add 10.10.1.1/24 dev v-cli", "link set v-cli up",
        "address add 10.10.2.1/24 dev v-srv", "link set v-srv up",
    ]) + "\n")
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=NODE)
    for ns, addr, gw in ((CLI, "10.10.1.2", "10.10.1.1"), (SRV, "10.10.2.2", "10.10.2.1")):
        sh("ip", "-batch", "-", ns=ns, stdin="\n".join([
            "link set lo up", f"address add {addr}/24 dev eth0", "link set eth0 up",
            f"route add default via {gw}"]) + "\n")
    try:
        yield
    finally:
        for ns in (NODE, CLI, SRV):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@contextlib.contextmanager
def servers(ns: str, addrs: tuple[tuple[str, int], ...]) -> Iterator[None]:
    """TCP servers inside `ns` that answer each connection with their own address."""
    socks = []
    with netns.entered(ns):
        for addr in addrs:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
            s.listen(16)
            s.settimeout(0.2)
            socks.append(s)
    stop = threading.Event()

    def serve(s: socket.socket) -> None:
        name = "{}:{}".format(*s.getsockname()).encode()
        while not stop.is_set():
            try:
                conn, _ = s.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(name)

    threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in socks]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for s in socks:
            s.close()


def fetch(ns: str, addr: tuple[str, int]) -> str:
    with netns.entered(ns):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with c:
        c.settimeout(10)
        c.connect(addr)
        return c.recv(100).decode()


def test_ipvs_round_robin_nat_through_pyroute2(net: None) -> None:
    """ip_vs + ip_vs_rr programmed over netlink as labctl does; packets really flow."""
    from pyroute2 import IPVS, IPVSDest, IPVSService

    svc = IPVSService(addr=VIP, port=VPORT, protocol=socket.IPPROTO_TCP, sched_name="rr")
    with netns.entered(NODE):  # a pyroute2 handle acts in its thread's namespace
        h = IPVS()
        try:
            h.service("add", service=svc)
            for addr, port in BACKENDS:
                h.dest("add", service=svc,
                       dest=IPVSDest(addr=addr, port=port, fwd_method=FWD_MASQ, weight=1))
            services = list(h.service("dump"))
            dests = list(h.dest("dump", service=svc))
        finally:
            h.close()
    assert len(services) == 1
    s = services[0].get("IPVS_CMD_ATTR_SERVICE")
    assert s.get("IPVS_SVC_ATTR_SCHED_NAME") == "rr"
    # IPVSDest.from_message() misreports the method: read the kernel's raw attribute.
    got = sorted((d.get("IPVS_CMD_ATTR_DEST").get("IPVS_DEST_ATTR_PORT"),
                  d.get("IPVS_CMD_ATTR_DEST").get("IPVS_DEST_ATTR_FWD_METHOD") & 0x7)
                 for d in dests)
    assert got == [(8080, FWD_MASQ), (8081, FWD_MASQ)]
    listing = sh("ipvsadm", "-Ln", ns=NODE)
    assert f"TCP  {VIP}:{VPORT} rr" in listing and "Masq" in listing, listing

    with servers(SRV, BACKENDS):
        answers = [fetch(CLI, (VIP, VPORT)) for _ in range(4)]
        from_node = fetch(NODE, (VIP, VPORT))  # the node itself reaches the VIP too
    expected = [f"{a}:{p}" for a, p in BACKENDS]
    assert sorted(set(answers)) == expected, answers
    assert answers[0] != answers[1] and answers[:2] == answers[2:], f"not round robin: {answers}"
    assert from_node in expected
    conns = sh("ipvsadm", "-Lnc", ns=NODE)
    assert "10.10.1.2" in conns, conns


def test_dummy_link_in_a_throwaway_namespace(net: None) -> None:
    out = sh("ip", "-d", "-o", "address", "show", "dev", "kube-ipvs0", ns=NODE)
    assert "dummy" in sh("ip", "-d", "-o", "link", "show", "kube-ipvs0", ns=NODE)
    assert f"inet {VIP}/32" in out
    assert "kube-ipvs0" not in sh("ip", "-o", "link", "show")  # not in the guest's root ns


def test_ipsets_and_the_set_match(net: None) -> None:
    """kube-proxy's IPVS-mode set types, one `ipset restore`, and iptables -m set."""
    sh("ipset", "restore", ns=NODE, stdin="\n".join([
        "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536",
        "create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536",
        "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535",
        f"add KUBE-CLUSTER-IP {VIP},tcp:{VPORT}",
        "add KUBE-LOOP-BACK 10.10.2.2,tcp:8080,10.10.2.2",
        "add KUBE-NODE-PORT-TCP 30080",
    ]) + "\n")
    assert f"{VIP},tcp:{VPORT}" in sh("ipset", "list", "KUBE-CLUSTER-IP", ns=NODE)
    sh("ipset", "test", "KUBE-CLUSTER-IP", f"{VIP},tcp:{VPORT}", ns=NODE)
    sh("iptables-restore", "--noflush", ns=NODE, stdin="\n".join([
        "*nat", ":KUBE-POSTROUTING - [0:0]",
        "-A KUBE-POSTROUTING -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE",
        "-A KUBE-POSTROUTING -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN",
        "COMMIT", ""]))
    assert "match-set KUBE-LOOP-BACK" in sh("iptables", "-t", "nat", "-S", ns=NODE)
    assert "KUBE-CLUSTER-IP" not in sh("ipset", "list", "-n")  # the guest's own: untouched


def test_nftables(net: None) -> None:
    sh("nft", "-f", "-", ns=NODE, stdin="""
table ip vmsmoke {
  set vips { type ipv4_addr . inet_proto . inet_service; elements = { 10.96.0.10 . tcp . 80 } }
  chain pre {
    type nat hook prerouting priority dstnat;
    ip daddr . meta l4proto . th dport @vips counter accept
  }
}
""")
    assert "10.96.0.10 . tcp . 80" in sh("nft", "list", "table", "ip", "vmsmoke", ns=NODE)


def test_labctl_capability_probe_finds_nothing_missing() -> None:
    """labctl's own probe (run before `up` in ipvs mode) agrees with the tests above."""
    from labctl.net import ipvs

    assert ipvs.probe("rr", ["iptables-restore"]) == []
