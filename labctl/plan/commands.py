"""A Plan printed as the equivalent `ip` / `sysctl` commands (for `plan` and `--dry-run`).

Running these lines one by one as a shell script builds the same lab (it is also the
"one `ip` process per object" baseline of `make bench-up`).
"""

from __future__ import annotations

import shlex

from labctl.plan.model import Plan


def _ip(netns: str, *args: str) -> str:
    return shlex.join(["ip", "-n", netns, *args])


def commands(plan: Plan) -> list[str]:
    out: list[str] = []
    for ns in plan.namespaces:
        out.append(shlex.join(["ip", "netns", "add", ns.name]))
        out.append(_ip(ns.name, "link", "set", "lo", "alias", plan.mark, "up"))
        for key, value in ns.sysctls:
            out.append(shlex.join(["ip", "netns", "exec", ns.name, "sysctl", "-qw",
                                   f"{key}={value}"]))
    for br in plan.bridges:
        out.append(_ip(br.netns, "link", "add", br.ifname, "type", "bridge"))
        out.append(_ip(br.netns, "link", "set", br.ifname, "alias", plan.mark, "up"))
    for v in plan.veths:
        out.append(_ip(v.netns, "link", "add", v.ifname, "type", "veth", "peer", "name",
                       v.peer_ifname, "netns", v.peer_netns))
        master = ["master", v.master] if v.master else []
        out.append(_ip(v.netns, "link", "set", v.ifname, *master, "alias", plan.mark, "up"))
        if v.hairpin:
            out.append(_ip(v.netns, "link", "set", v.ifname, "type", "bridge_slave",
                           "hairpin", "on"))
        out.append(_ip(v.peer_netns, "link", "set", v.peer_ifname, "alias", plan.mark, "up"))
    for a in plan.addresses:
        out.append(_ip(a.netns, "addr", "add", a.cidr, "dev", a.ifname))
    for r in plan.routes:
        where = ["via", r.via] if r.via else ["dev", r.dev]
        out.append(_ip(r.netns, "route", "add", r.dst, *where))
    return out
