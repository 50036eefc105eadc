"""`labctl trace`: send one probe from a pod, a node or the external client and show the
packet's walk through the lab."""

from __future__ import annotations

import json
import os

from labctl.cli.commands import Choice, FloatRange, argument, command, option
from labctl.cli.common import lab_option
from labctl.errors import LabctlError


@command(short_help="Follow one probe packet through every hook and rule it meets.")
@argument("source", metavar="SOURCE")
@argument("dest", metavar="DEST[:PORT]")
@option("--proto", type=Choice(["tcp", "udp", "icmp"]),
        help="Protocol of the probe (default: the port's own, else tcp).")
@option("-n", "--namespace", default="default", show_default=True,
        help="Namespace of a pod or Service named without NS/.")
@option("--timeout", type=FloatRange(0.1, 30), default=2.0,
        show_default=True, metavar="SECONDS", help="How long the probe waits for an "
        "answer.")
@option("-o", "--output", "fmt", type=Choice(["text", "json"]), default="text",
        show_default=True)
@lab_option
def trace(source: str, dest: str, proto: str | None, namespace: str, timeout: float,
          fmt: str, lab_name: str | None) -> None:
    """Send one probe from SOURCE to DEST and show the packet's walk: every netfilter hook
    and rule it met in each node (nftrace), the DNAT/SNAT applied, the route and the
    interface it left by, and where it arrived — or which rule dropped or rejected it;
    then the same for the reply (needs root).

    SOURCE is a pod (NAME or NS/NAME), a node, or `external`: the client outside the
    cluster, which reaches NodePorts, LoadBalancer IPs and externalIPs. DEST is an IP
    address, a node (NODE:NODEPORT), a Service (NAME or NS/NAME: its ClusterIP; from
    `external`, its LoadBalancer IP, an externalIP, else its NodePort on the first
    node) or a pod (its IP); PORT a number or a port name, by default the Service's
    first port (a pod's first containerPort). The probe is a TCP connect, a UDP
    datagram or an ICMP echo sent from a socket in SOURCE's network namespace; its first
    packet and the first answer are traced.

    \b
    How: each namespace the probe may cross (the source and every node) gets a temporary
    table `inet labctl-trace-<pid>` marking the probe's packets with `meta nftrace` (by
    port, by the probe's DSCP 0x2d and by a conntrack label, so NAT does not lose them),
    and `nft monitor trace` runs there; both are removed afterwards, even on Ctrl-C.
    The host's ruleset is never touched. Rules are quoted as the ruleset shows them
    (iptables-save for iptables mode, nft for nftables mode); conntrack shows the
    translation each node recorded.

    \b
    Modes:
      iptables (iptablesBackend nft), nftables: the whole walk.
      iptables with iptablesBackend legacy: cannot be traced (nftrace does not see
        iptables-legacy rules); use `labctl rules NODE` or switch the backend.
      ipvs (in the VM): IPVS's DNAT is not a rule: the trace shows the packet entering
        INPUT for the Service address on kube-ipvs0 and leaving with the endpoint's
        address; conntrack shows the translation, `labctl rules NODE` ipvsadm -Ln.
      userspace (deprecated): the walk ends at the REDIRECT to the node's proxy
        process; the proxy's own connection to an endpoint is not followed.

    \b
    Examples:
      labctl trace client web                 # Service default/web, its first port
      labctl trace client web:http -o json    # a named port; structured events
      labctl trace client kube-system/kube-dns:53 --proto udp
      labctl trace client 10.96.0.10:53 --proto udp
      labctl trace client 172.18.0.3:30080    # a NodePort (masqueraded to the endpoint)
      labctl trace client web-0 --proto icmp  # a pod, by name
      labctl trace -n shop frontend backend:8080
      labctl trace external webnp             # from outside: LB IP, externalIP or NodePort
      labctl trace external node2:30080       # a NodePort on node2, from outside
      labctl trace node1 web                  # from a node's own network stack
    """
    from labctl.lab import lifecycle, store
    from labctl.lab import trace as tracing
    from labctl.trace import report, target

    lab = lifecycle.pick_lab(lab_name)
    state = store.state_of(lab)
    src = target.resolve_source(state, source, namespace)
    destination = target.resolve(state, dest, proto, namespace,
                                 outside=src.kind == "external")
    if os.geteuid() != 0:
        raise LabctlError("trace needs root: it enters the lab's network namespaces "
                          "(run it with sudo)")
    result = tracing.run(lab, state, src, destination, timeout)
    if fmt == "json":
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
        return
    d, o = result.destination, result.outcome
    lines = report.header(d.protocol, result.source, d.ip, d.port, d.what, lab, result.mode)
    lines.append(report.outcome_line(o.result, o.detail, o.seconds, o.reply))
    lines += report.render_walk(result.walk)
    print("\n".join(lines))
