"""A Plan, or a PlanDiff, printed as the equivalent `ip` / `sysctl` commands (for `plan`,
`up --dry-run` and `apply --dry-run`).

Running these lines one by one as a shell script builds the same lab, or makes the same
change to a running one (it is also the "one `ip` process per object" baseline of
`make bench-up`). The lines follow the executor's order (labctl.net.apply).
"""

from __future__ import annotations

import shlex

from labctl.plan.diff import Deletions, PlanDiff, diff
from labctl.plan.model import Plan, Route


def _ip(netns: str, *args: str) -> str:
    return shlex.join(["ip", "-n", netns, *args])


def _sysctl(netns: str, key: str, value: str) -> str:
    return shlex.join(["ip", "netns", "exec", netns, "sysctl", "-qw", f"{key}={value}"])


def _where(r: Route) -> list[str]:
    return ["via", r.via] if r.via else ["dev", r.dev]


def commands(plan: Plan) -> list[str]:
    """The whole lab: the diff against nothing."""
    return diff_commands(diff(None, plan))


def diff_commands(d: PlanDiff) -> list[str]:
    """A change to a lab, as `ip` commands in the order the executor makes it."""
    out: list[str] = []
    for ns in d.create_namespaces:
        out.append(shlex.join(["ip", "netns", "add", ns.name]))
        out.append(_ip(ns.name, "link", "set", "lo", "alias", d.mark, "up"))
        out += [_sysctl(ns.name, key, value) for key, value in ns.sysctls]
    for ns in d.set_sysctls:
        out += [_sysctl(ns.name, key, value) for key, value in ns.sysctls]
    out += _deletions(d, d.deletions(first=True))
    for br in d.add_bridges:
        out.append(_ip(br.netns, "link", "add", br.ifname, *(("address", br.mac) if br.mac
                                                              else ()), "type", "bridge"))
        out.append(_ip(br.netns, "link", "set", br.ifname, "alias", d.mark, "up"))
    for v in d.add_veths:
        out.append(_ip(v.netns, "link", "add", v.ifname, "type", "veth", "peer", "name",
                       v.peer_ifname, "netns", v.peer_netns))
        master = ["master", v.master] if v.master else []
        out.append(_ip(v.netns, "link", "set", v.ifname, *master, "alias", d.mark, "up"))
        if v.hairpin:
            out.append(_ip(v.netns, "link", "set", v.ifname, "type", "bridge_slave",
                           "hairpin", "on"))
        out.append(_ip(v.peer_netns, "link", "set", v.peer_ifname, "alias", d.mark, "up"))
    for a in d.add_addresses:
        out.append(_ip(a.netns, "addr", "add", a.cidr, "dev", a.ifname))
    for r in d.add_routes:
        out.append(_ip(r.netns, "route", "add", r.dst, *_where(r)))
    out += _deletions(d, d.deletions(first=False))
    out += [shlex.join(["ip", "netns", "del", ns.name]) for ns in d.delete_namespaces]
    return out


def _deletions(d: PlanDiff, objs: Deletions) -> list[str]:
    out = [_ip(r.netns, "route", "del", r.dst, *_where(r)) for r in objs.routes]
    out += [_ip(a.netns, "addr", "del", a.cidr, "dev", a.ifname) for a in objs.addresses]
    for v in objs.veths:  # by the end that stays (deleting a veth deletes both ends)
        netns, ifname = d.surviving_end(v)
        out.append(_ip(netns, "link", "del", ifname))
    out += [_ip(b.netns, "link", "del", b.ifname) for b in objs.bridges]
    return out
