"""kube-proxy's iptables mode as a pure renderer.

    rs = iptables.render(input_for_node(state, "node1"))
    rs.payload()            # what kube-proxy feeds `iptables-restore --noflush --counters`
    rs.jump_rules()         # the rules it ensures outside the restore (EnsureRule, -I)
    rs.partial_payload(old) # a partial resync after `old`

The ruleset is structured data (per table: chain declarations and rules in emission
order, each tagged with its Service); every method is a view over it. What is written,
and why, is in iptables_render.py. Nothing here runs iptables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from labctl.proxy.base import ProxyInput
from labctl.proxy.iptables_render import (
    FILTER,
    FILTER_TOP_CHAINS,
    KUBE_EXTERNAL_SERVICES,
    KUBE_FORWARD,
    KUBE_NODEPORTS,
    KUBE_POSTROUTING,
    KUBE_PROXY_CANARY,
    KUBE_PROXY_FIREWALL,
    KUBE_SERVICES,
    KUBELET_FIREWALL,
    NAT,
    NAT_TOP_CHAINS,
    ChainDecl,
    Rule,
    build,
    is_service_chain,
)

RESTORE_FLAGS = ("--noflush", "--counters")  # how kube-proxy runs iptables-restore
Argv = list[str]


@dataclass(frozen=True)
class Jump:
    """One iptablesJumpChains entry: `-A <src> <extra> -m comment --comment <c> -j <dst>`."""

    table: str
    src: str
    dst: str
    comment: str
    extra: tuple[str, ...] = ()

    def argv(self, op: str) -> Argv:
        comment = ["-m", "comment", "--comment", self.comment] if self.comment else []
        return ["-t", self.table, op, self.src, *self.extra, *comment, "-j", self.dst]


NEW = ("-m", "conntrack", "--ctstate", "NEW")
# In the order kube-proxy ensures them; each is prepended, so the last one ends up first.
JUMPS = (
    Jump(FILTER, "INPUT", KUBE_EXTERNAL_SERVICES,
         "kubernetes externally-visible service portals", NEW),
    Jump(FILTER, "FORWARD", KUBE_EXTERNAL_SERVICES,
         "kubernetes externally-visible service portals", NEW),
    Jump(FILTER, "INPUT", KUBE_NODEPORTS, "kubernetes health check service ports"),
    Jump(FILTER, "FORWARD", KUBE_SERVICES, "kubernetes service portals", NEW),
    Jump(FILTER, "OUTPUT", KUBE_SERVICES, "kubernetes service portals", NEW),
    Jump(FILTER, "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    Jump(FILTER, "INPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", NEW),
    Jump(FILTER, "OUTPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", NEW),
    Jump(FILTER, "FORWARD", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", NEW),
    Jump(NAT, "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    Jump(NAT, "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    Jump(NAT, "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
)
# kubelet's own jumps, which kube-proxy also ensures but --cleanup leaves alone.
KUBELET_JUMPS = (
    Jump(FILTER, "INPUT", KUBELET_FIREWALL, ""),
    Jump(FILTER, "OUTPUT", KUBELET_FIREWALL, ""),
)
# ipt.Monitor creates an empty canary chain per table; its vanishing means "flushed".
CANARY_TABLES = ("mangle", NAT, FILTER)


def render(inp: ProxyInput, *, random_fully: bool = True) -> IptablesRuleset:
    """The rules kube-proxy's iptables mode programs for `inp` (one node's view).

    random_fully: whether the iptables binary supports `--random-fully` (MASQUERADE)."""
    filter_data, nat_data = build(inp, random_fully)
    return IptablesRuleset(tuple(filter_data.chains), tuple(filter_data.rules),
                           tuple(nat_data.chains), tuple(nat_data.rules))


@dataclass(frozen=True)
class IptablesRuleset:
    filter_chains: tuple[ChainDecl, ...]
    filter_rules: tuple[Rule, ...]
    nat_chains: tuple[ChainDecl, ...]
    nat_rules: tuple[Rule, ...]

    # ------------------------------------------------------------- restore input

    def payload(self, old: IptablesRuleset | None = None) -> str:
        """A full sync. From empty state by default; with `old` (what is loaded now), also
        flush and delete old per-service chains that are gone, as kube-proxy does after
        reading them back with iptables-save."""
        stale = self._stale(old) if old else []
        return self._text(lambda _service: True, stale)

    def partial_payload(self, old: IptablesRuleset) -> str:
        """A partial sync after `old`: top-level chains and the whole filter table are
        rewritten; a Service's SVC/SVL/EXT/FW/SEP chains only if they changed.

        kube-proxy calls a Service changed when its Service or EndpointSlice objects
        changed since the last sync; here it is changed when its chains would hold other
        rules (comments aside). The kernel ends up the same; the only difference is that
        an object change that leaves the rules alone rewrites nothing here."""
        now, before = _contents(self), _contents(old)
        changed = {s for s in self._services() if now.get(s) != before.get(s)}
        return self._text(changed.__contains__, self._stale(old))

    def _text(self, rewrite: Callable[[str], bool], stale: list[str]) -> str:
        def keep(chain: str, service: str) -> bool:
            return not is_service_chain(chain) or rewrite(service)

        nat_chains = [c.line for c in self.nat_chains if keep(c.name, c.service)]
        nat_chains += [f":{name} - [0:0]" for name in stale]
        body = [r.line for r in self.nat_rules if not r.tail and keep(r.chain, r.service)]
        # Deletions go after every service rule and before the "last rule" of KUBE-SERVICES.
        body += [f"-X {name}" for name in stale]
        body += [r.line for r in self.nat_rules if r.tail]
        return _restore([
            (FILTER, [c.line for c in self.filter_chains], [r.line for r in self.filter_rules]),
            (NAT, nat_chains, body)])

    def _stale(self, old: IptablesRuleset) -> list[str]:
        """Old per-service chains (nat) no longer declared; sorted (kube-proxy: set order)."""
        now = {c.name for c in self.nat_chains}
        return sorted({c.name for c in old.nat_chains
                       if is_service_chain(c.name) and c.name not in now})

    def _services(self) -> set[str]:
        return {c.service for c in self.nat_chains if c.service}

    # ------------------------------------------------------------- outside the restore

    def jump_rules(self) -> list[Argv]:
        """The jumps kube-proxy ensures on every full sync, as iptables argv (no binary).

        EnsureRule semantics: run with `-C` in place of `-I` first and insert only when
        missing. The target chains must exist first: see ensure_chains()."""
        return [j.argv("-I") for j in (*JUMPS, *KUBELET_JUMPS)]

    def ensure_chains(self) -> list[Argv]:
        """`-N` for every chain a jump rule targets (EnsureChain, before each EnsureRule),
        then the KUBE-PROXY-CANARY chains ipt.Monitor keeps. "Already exists" is success."""
        seen: list[tuple[str, str]] = []
        for jump in (*JUMPS, *KUBELET_JUMPS):
            if (jump.table, jump.dst) not in seen:
                seen.append((jump.table, jump.dst))
        seen += [(table, KUBE_PROXY_CANARY) for table in CANARY_TABLES]
        return [["-t", table, "-N", chain] for table, chain in seen]

    def cleanup_payload(self, *, kubelet_chains: bool = False,
                        ) -> tuple[str, list[Argv]]:
        """What `kube-proxy --cleanup` does (CleanupLeftovers) to this ruleset's leftovers.

        Run the argv first (the jump deletions; "does not exist" is success, as upstream),
        then the restore text (flush and delete the chains). Like upstream, KUBE-FIREWALL
        and its jumps stay (they are kubelet's) unless kubelet_chains is set."""
        jumps = (*JUMPS, *(KUBELET_JUMPS if kubelet_chains else ()))
        argv = [j.argv("-D") for j in jumps]
        argv.append(["-t", "mangle", "-X", KUBE_PROXY_CANARY])
        services = sorted({c.name for c in self.nat_chains if is_service_chain(c.name)})
        nat = [*NAT_TOP_CHAINS, KUBE_PROXY_CANARY, *services]
        filt = [*FILTER_TOP_CHAINS, KUBE_PROXY_CANARY,
                *([KUBELET_FIREWALL] if kubelet_chains else [])]
        text = _restore([(NAT, [f":{c} - [0:0]" for c in nat], [f"-X {c}" for c in nat]),
                         (FILTER, [f":{c} - [0:0]" for c in filt], [f"-X {c}" for c in filt])])
        return text, argv

    # ------------------------------------------------------------- views

    def for_service(self, namespace: str, name: str) -> str:
        """The lines of one Service: its rules in the top-level chains (KUBE-SERVICES,
        KUBE-NODEPORTS, KUBE-EXTERNAL-SERVICES, KUBE-PROXY-FIREWALL) and its own chains,
        as restore text ("" if kube-proxy programs nothing for it)."""
        key = f"{namespace}/{name}"
        tables = []
        for table, decls, rules in ((FILTER, self.filter_chains, self.filter_rules),
                                    (NAT, self.nat_chains, self.nat_rules)):
            mine = [r for r in rules if r.service == key]
            used = {r.chain for r in mine}
            chains = [c.line for c in decls if c.service == key or
                      (not is_service_chain(c.name) and c.name in used)]
            if chains:
                tables.append((table, chains, [r.line for r in mine]))
        return _restore(tables) if tables else ""

    def chains(self) -> dict[str, dict[str, list[str]]]:
        """table → chain → its rule lines, chains in declaration order."""
        out: dict[str, dict[str, list[str]]] = {}
        for table, decls, rules in ((FILTER, self.filter_chains, self.filter_rules),
                                    (NAT, self.nat_chains, self.nat_rules)):
            out[table] = {c.name: [] for c in decls}
            for rule in rules:
                out[table][rule.chain].append(rule.line)
        return out


def _contents(rs: IptablesRuleset) -> dict[str, tuple[list[str], list[Rule]]]:
    """Per Service, what its per-service chains are and do (the unit of a partial sync),
    gathered in one pass (per Service, a scan of every rule would be quadratic).

    Comments are left out: they only differ when large-cluster mode switches, and then
    kube-proxy does not rewrite unchanged Services either."""
    out: dict[str, tuple[list[str], list[Rule]]] = {}
    for c in rs.nat_chains:
        if c.service:
            out.setdefault(c.service, ([], []))[0].append(c.name)
    for r in rs.nat_rules:
        if r.service and is_service_chain(r.chain):
            out.setdefault(r.service, ([], []))[1].append(_uncommented(r))
    return out


def _uncommented(rule: Rule) -> Rule:
    args = list(rule.args)
    if args[:3] == ["-m", "comment", "--comment"]:
        del args[:4]
    return Rule(rule.chain, tuple(args), rule.service)


def _restore(tables: list[tuple[str, list[str], list[str]]]) -> str:
    lines: list[str] = []
    for name, chains, rules in tables:
        lines += [f"*{name}", *chains, *rules, "COMMIT"]
    return "\n".join(lines) + "\n"
