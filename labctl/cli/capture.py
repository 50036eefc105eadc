"""`labctl capture`: tcpdump inside a pod's, a node's or the external client's namespace."""

from __future__ import annotations

import os
import sys

from labctl.cli.commands import FloatRange, IntRange, argument, command, option
from labctl.cli.common import lab_option
from labctl.cli.output import err
from labctl.cluster.state import ClusterState
from labctl.errors import LabctlError


def split_target(spec: str) -> tuple[str, str]:
    """`POD`, `NODE`, `external`, `NS/POD`, each with an optional `:IFACE` (eth0)."""
    target, sep, iface = spec.rpartition(":")
    if not sep:
        return spec, "eth0"
    if not target or not iface:
        raise LabctlError(f"bad capture target {spec!r}: expected POD, NODE or external, "
                          "optionally with :INTERFACE (e.g. node1:cni0)")
    return target, iface


def describe(state: ClusterState, target: str, namespace: str) -> str:
    """What the user named, in words (the target resolves the way `labctl exec`'s does)."""
    from labctl.cli.targets import find_pod

    if target == "external":
        return "the external client"
    if "/" not in target and any(n.name == target for n in state.nodes):
        return f"node {target}"
    return f"pod {find_pod(state, target, namespace).key}"


@command(short_help="Capture packets in a pod's or node's namespace (tcpdump).")
@argument("target", metavar="POD|NODE[:IFACE]")
@argument("expression", nargs=-1, rest=True, metavar="[FILTER...]")
@option("-w", "--write", "out", metavar="FILE",
        help="Write a pcap to FILE (`-` = stdout, for `| wireshark -k -i -`) instead "
             "of printing one line per packet.")
@option("-c", "--count", type=IntRange(1), metavar="N",
        help="Stop after N packets.")
@option("--timeout", type=FloatRange(0, lo_open=True), metavar="SECONDS",
        help="Stop after SECONDS even if fewer packets came (default: Ctrl-C or -c).")
@option("-n", "--namespace", default="default", show_default=True)
@lab_option
def capture(target: str, expression: tuple[str, ...], out: str | None, count: int | None,
            timeout: float | None, namespace: str, lab_name: str | None) -> None:
    """Capture packets inside the lab: tcpdump runs in the network namespace of a pod, a
    node or `external`, so it sees the lab's interfaces only (needs root).

    TARGET is named as for `labctl exec` (POD, NAMESPACE/POD, NODE, external), with an
    optional :IFACE — default eth0. A pod has eth0; a node has eth0 (the node network),
    cni0 (its pod bridge: every pod of the node) and one veth per pod; `any` is every
    interface at once. FILTER is a tcpdump/pcap filter expression.

    Without -w, one line per packet as tcpdump prints it; -w FILE writes a pcap that
    Wireshark opens; -w - streams the pcap to stdout.

    \b
    Examples:
      labctl capture client                          # everything client's eth0 sees
      labctl capture node1:cni0 tcp port 8080        # the bridge of node1
      labctl capture web-0 -c 10 -w web.pcap icmp or tcp
      labctl capture node2:any -w - | wireshark -k -i -
      labctl capture external --timeout 30 -w ext.pcap
    """
    from labctl.cli.targets import resolve
    from labctl.lab import lifecycle, store
    from labctl.net import capture as cap

    name, iface = split_target(target)
    lab = lifecycle.pick_lab(lab_name)
    state = store.state_of(lab)
    netns, _env = resolve(state, name, namespace, None, store.state_dir(lab))
    what = describe(state, name, namespace)
    if os.geteuid() != 0:
        raise LabctlError("capture needs root: it enters the lab's network namespaces "
                          "(run it with sudo)")
    cap.check_interface(netns, iface, what)
    pcap = out is not None
    argv = cap.tcpdump_argv(netns, iface, count, pcap, expression)
    if out in (None, "-"):
        if out == "-" and sys.stdout.isatty():
            raise LabctlError("not writing a pcap to a terminal: pipe it (e.g. "
                              "`| wireshark -k -i -`) or use -w FILE.pcap")
        sys.stdout.flush()
        err(f"capturing on {what}, {iface} (netns {netns}); "
            + ("stops after the count or timeout" if count or timeout else "Ctrl-C stops"))
        result = cap.run(argv, None, timeout)
    else:
        try:
            f = open(out, "wb")  # noqa: SIM115 - closed below, after tcpdump ends
        except OSError as exc:
            raise LabctlError(f"cannot write {out}: {exc.strerror}") from None
        with f:
            err(f"capturing on {what}, {iface} (netns {netns}) into {out}")
            result = cap.run(argv, f, timeout)
    if result.timed_out:
        err(f"capture: stopped after --timeout {timeout:g} s")
    if result.returncode != 0:
        sys.exit(result.returncode)
