"""kube-proxy commands: `rules`, `proxy render`, `proxy-mode`."""

from __future__ import annotations

from dataclasses import replace

from labctl.cli.commands import Choice, PathArg, argument, command, group, option
from labctl.cli.common import lab_option
from labctl.cli.output import err
from labctl.errors import LabctlError

RENDER_MODES = ("iptables", "nftables", "ipvs", "userspace")
# Why userspace mode is deprecated (removed from Kubernetes in 1.26), for --help texts.
USERSPACE_NOTE = ("userspace is the deprecated original (removed from Kubernetes in 1.26): "
                  "a proxy process per node copies every connection's bytes through user "
                  "space — slow, and backends see the node, not the client — though, "
                  "unlike iptables mode, it retries another endpoint when a connect "
                  "fails")
# ipvs_render.SCHEDULERS (not imported here: it would slow every command's start)
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo",
              "ovf", "mh", "twos")


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@command()
@argument("node")
@option("--service", "service", metavar="NS/NAME",
        help="Only the rules of one Service (NAME alone means namespace default).")
@lab_option
def rules(node: str, service: str | None, lab_name: str | None) -> None:
    """Show the rules kube-proxy installed in NODE, read back from the kernel.

    iptables mode prints `iptables-save` of the node; nftables mode `nft list ruleset`;
    ipvs mode `ipvsadm -Ln`, kube-ipvs0's addresses, `ipset save` and `iptables-save`;
    userspace mode (deprecated) `iptables-save` and what the node's proxy process serves.

    \b
    Examples:
      labctl rules node1
      labctl rules node2 --service default/web
    """
    from labctl.cli.rules_view import node_rules
    from labctl.lab import lifecycle, store

    lab = lifecycle.pick_lab(lab_name)
    state = store.state_of(lab)
    if node not in [n.name for n in state.nodes]:
        raise LabctlError(f"no node named {node!r}; nodes: "
                          f"{', '.join(n.name for n in state.nodes)}")
    print(node_rules(state, node, service), end="")


@group()
def proxy() -> None:
    """What kube-proxy would program, without a lab.

    \b
    Example:
      labctl proxy render --mode nftables --node-name node1 --node-ip 172.18.0.2 lab.yaml
    """


@proxy.command()
@argument("files", nargs=-1, required=True, type=PathArg())
@option("--mode", type=Choice(RENDER_MODES), default="iptables", show_default=True,
        help=f"kube-proxy's mode; {USERSPACE_NOTE}.")
@option("--node-name", required=True, help="The node kube-proxy runs on (decides which "
        "endpoints are local).")
@option("--node-ip", "node_ips", required=True, help="The node's IP (comma-separated "
        "for several).")
@option("--cluster-cidr", default="", help="Pod range; traffic from outside it to a "
        "ClusterIP is masqueraded (kube-proxy's --cluster-cidr).")
@option("--service-cidr", default="", help="Service range (nftables: unallocated "
        "ClusterIPs are dropped).")
@option("--nodeport-addresses", default="", help="Comma-separated CIDRs NodePorts "
        "listen on (default: every local address).")
@option("--masquerade-all", is_flag=True, help="SNAT all traffic to ClusterIPs.")
@option("--no-localhost-nodeports", is_flag=True,
        help="Do not accept NodePort traffic to 127.0.0.1 (iptables mode).")
@option("--ipvs-scheduler", default="rr", show_default=True,
        type=Choice(SCHEDULERS),
        help="IPVS scheduler of every virtual server (ipvs mode).")
def render(files: tuple[str, ...], mode: str, node_name: str, node_ips: str, cluster_cidr: str,
           service_cidr: str, nodeport_addresses: str, masquerade_all: bool,
           no_localhost_nodeports: bool, ipvs_scheduler: str) -> None:
    """Print what kube-proxy would load for the Services and EndpointSlices in FILES.

    One full sync from empty state: the `iptables-restore` input (both tables) or the
    `nft -f` input, with kube-proxy's chain names, comments and rule order. ipvs mode
    prints kube-ipvs0's addresses, the virtual and real servers (`ipvsadm-save -n`
    format), the `ipset restore` input and the `iptables-restore` input. EndpointSlices
    are derived from Pods and selectors when the files give none; ClusterIPs and
    NodePorts are taken as written (allocated when missing), LoadBalancer IPs from
    status.loadBalancer.ingress. userspace mode prints the proxy ports (as `#` lines) and
    the portal rules that send Service traffic to them; it is deprecated: see
    `labctl proxy-mode --help`.

    \b
    Examples:
      labctl proxy render --mode nftables --node-name node1 --node-ip 172.18.0.2 \\
          --cluster-cidr 10.244.0.0/16 svc.yaml
      labctl proxy render --mode ipvs --node-name node1 --node-ip 172.18.0.2,10.244.0.1 \\
          --cluster-cidr 10.244.0.0/16 --ipvs-scheduler wrr svc.yaml
    """
    from labctl.cluster.compile import compile_files
    from labctl.proxy import base

    state, warnings = compile_files(files)
    for d in warnings:
        if d.severity == "warning":
            err(d.format())
    # A snapshot: only LoadBalancer addresses the files state are programmed.
    services = [replace(s, load_balancer_ip=(s.service.load_balancer_ingress or ("",))[0])
                for s in state.services]
    config = base.ProxyConfig(
        node_name=node_name, node_ips=_split(node_ips), cluster_cidr=cluster_cidr,
        service_cidr=service_cidr, nodeport_addresses=_split(nodeport_addresses),
        masquerade_all=masquerade_all, localhost_nodeports=not no_localhost_nodeports,
        ipvs_scheduler=ipvs_scheduler)
    inp = base.build_input(config, services, state.endpoint_slices)
    if mode == "iptables":
        from labctl.proxy import iptables

        print(iptables.render(inp).payload(), end="")
    elif mode == "userspace":
        from labctl.proxy import userspace

        rs = userspace.render(inp)
        print(rs.describe() + rs.payload(), end="")
    elif mode == "ipvs":
        from labctl.proxy import ipvs

        print(ipvs.render(inp).payload(), end="")
    else:
        from labctl.proxy import nftables

        print(nftables.render(inp).payload(), end="")


@command(name="proxy-mode")
@argument("mode", type=Choice(RENDER_MODES))
@lab_option
def proxy_mode(mode: str, lab_name: str | None) -> None:
    """Switch a running lab's kube-proxy to MODE: the old rules are removed from every
    node and the new ones loaded; pods and connections stay. ipvs needs a kernel with
    IPVS (checked first: nothing changes when it is missing).

    \b
    userspace mode is DEPRECATED: Kubernetes removed it in 1.26. A proxy process
    on every node accepts each connection and opens its own to a backend, so every
    byte crosses user space twice (slow) and backends see the node, not the client.
    It is here because it did one thing iptables mode does not: when a backend does
    not answer, it retries the next one (after 250 ms, 500 ms, 1 s, 2 s).

    \b
    Example:  labctl proxy-mode nftables
    """
    from labctl.lab import lifecycle

    lab = lifecycle.pick_lab(lab_name)
    old, times = lifecycle.set_proxy_mode(lab, mode)
    if old == mode:
        print(f"lab {lab!r} already runs kube-proxy in {mode} mode")
        return
    print(f"lab {lab!r}: kube-proxy switched from {old} to {mode} on "
               f"{len(times)} nodes ({sum(times.values()) * 1000:.0f} ms)")
