"""kube-proxy's iptables mode as a pure renderer.

    rs = iptables.render(input_for_node(state, "node1"))
    rs.payload()            # what kube-proxy feeds `iptables-restore --noflush --counters`
    rs.jump_rules()         # the rules it ensures outside the restore (EnsureRule, -I)
    rs.partial_payload(old) # a partial resync after `old`
    rs, text = iptables.render_update(old, inp)  # the same, re-rendering only changes

The ruleset is structured data: kube-proxy's fixed chains and rules, then one part per
Service (its chain declarations and rules in emission order, each tagged with the
Service, and their restore text); every method is a view over it. render_update reuses
the parts of unchanged Services, so a partial sync costs what changed plus one join.
What is written, and why, is in iptables_render.py. Nothing here runs iptables.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from labctl.proxy.base import ProxyInput, ServiceKey
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
    FixedPart,
    Rule,
    ServicePart,
    SyncContext,
    build,
    is_service_chain,
    service_part,
    sync_context,
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
    fixed, parts = build(inp, random_fully)
    return IptablesRuleset(fixed, parts, sync_context(inp), random_fully)


def render_update(old: IptablesRuleset, inp: ProxyInput, *, random_fully: bool = True,
                  ) -> tuple[IptablesRuleset, str]:
    """The ruleset for `inp` and the partial-sync payload after `old`, in time
    proportional to what changed: only Services whose ServicePorts differ from those
    `old` was rendered from are rendered again; the others' parts (and their text) are
    reused. Equal to `(render(inp), render(inp).partial_payload(old))`.

    When the flags or large-cluster mode changed, every Service is rendered again (each
    one's rules depend on them); the payload is still the partial one, as kube-proxy's."""
    ctx = sync_context(inp)
    if ctx != old.context or random_fully != old.random_fully:
        new = render(inp, random_fully=random_fully)
    else:
        before = old.by_key
        parts = []
        for key, ports in inp.services.items():
            prev = before.get(key)
            if prev is None or (prev.ports is not ports and prev.ports != ports):
                prev = service_part(ctx, key, ports)
            parts.append(prev)
        new = IptablesRuleset(old.fixed, tuple(parts), ctx, random_fully)
    return new, new.partial_payload(old)


@dataclass(frozen=True)
class IptablesRuleset:
    """kube-proxy's own part, then one part per Service, and what they were rendered
    with. `filter_chains`, `filter_rules`, `nat_chains`, `nat_rules` give it flat."""

    fixed: FixedPart
    parts: tuple[ServicePart, ...]
    context: SyncContext
    random_fully: bool = True

    @functools.cached_property
    def by_key(self) -> dict[ServiceKey, ServicePart]:
        return {p.key: p for p in self.parts}

    @functools.cached_property
    def filter_chains(self) -> tuple[ChainDecl, ...]:
        return self.fixed.filter_chains  # a Service's own chains are all in nat

    @functools.cached_property
    def filter_rules(self) -> tuple[Rule, ...]:
        return (*self.fixed.filter_head, *(r for p in self.parts for r in p.filter_rules),
                *self.fixed.filter_tail)

    @functools.cached_property
    def nat_chains(self) -> tuple[ChainDecl, ...]:
        return (*self.fixed.nat_chains, *(c for p in self.parts for c in p.nat_chains))

    @functools.cached_property
    def nat_rules(self) -> tuple[Rule, ...]:
        return (*self.fixed.nat_head, *(r for p in self.parts for r in p.nat_rules),
                *self.fixed.nat_tail)

    # ------------------------------------------------------------- restore input

    def payload(self, old: IptablesRuleset | None = None) -> str:
        """A full sync. From empty state by default; with `old` (what is loaded now), also
        flush and delete old per-service chains that are gone, as kube-proxy does after
        reading them back with iptables-save."""
        return self._text(None, self._stale(old) if old else [])

    def partial_payload(self, old: IptablesRuleset) -> str:
        """A partial sync after `old`: top-level chains and the whole filter table are
        rewritten; a Service's SVC/SVL/EXT/FW/SEP chains only if they changed.

        kube-proxy calls a Service changed when its Service or EndpointSlice objects
        changed since the last sync; here it is changed when its chains would hold other
        rules (comments aside). The kernel ends up the same; the only difference is that
        an object change that leaves the rules alone rewrites nothing here.

        One more difference: the filter table is left out when its rules are the same
        as in `old` (kube-proxy writes it on every sync). The kernel commits each table
        of a restore as its own transaction, and with iptables-nft each costs ~10 ms
        whatever it holds: a one-Service change then loads in one, not two.

        O(Services) string joins plus the work of the changed Services: a part shared
        with `old` (render_update reuses them) is unchanged without looking inside."""
        rewrite, stale = self._diff(old)
        return self._text(rewrite, stale, filter_too=self.filter_lines != old.filter_lines)

    def _diff(self, old: IptablesRuleset) -> tuple[set[ServiceKey], list[str]]:
        """The Services whose own chains changed since `old`, and what is stale."""
        before = old.by_key
        changed = {p.key for p in self.parts if p.nat_chains
                   and (prev := before.get(p.key)) is not p
                   and (prev is None or p.contents != prev.contents)}
        return changed, self._stale(old)

    def _stale(self, old: IptablesRuleset) -> list[str]:
        """Old per-service chains no longer declared; sorted (kube-proxy: set order).

        Chain names hash the ServicePortName, so a chain only ever belongs to one
        Service: what is stale is found Service by Service (a part shared with `old`
        has nothing stale)."""
        before = old.by_key
        stale: set[str] = set()
        kept = 0
        for part in self.parts:
            prev = before.get(part.key)
            if prev is not None:
                kept += 1
                if prev is not part:
                    stale |= prev.chain_names - part.chain_names
        if kept < len(before):  # Services gone
            now = self.by_key
            for prev in old.parts:
                if prev.key not in now:
                    stale |= prev.chain_names
        return sorted(stale)

    @functools.cached_property
    def filter_lines(self) -> list[str]:
        """The filter table's rules, as restore lines."""
        fixed = self.fixed
        return [*(r.line for r in fixed.filter_head),
                *(p.filter_text for p in self.parts if p.filter_text),
                *(r.line for r in fixed.filter_tail)]

    def _text(self, rewrite: set[ServiceKey] | None, stale: list[str],
              filter_too: bool = True) -> str:
        """The restore input, rewriting the own chains of the Services in `rewrite`
        (None: all); the filter table too unless `filter_too` is off."""
        fixed, parts = self.fixed, self.parts
        if rewrite is None:
            mine = [p.chain_text for p in parts if p.chain_text]
            body = [p.nat_text for p in parts if p.nat_text]
        else:
            mine = [p.chain_text for p in parts if p.key in rewrite and p.chain_text]
            body = [t for p in parts
                    if (t := p.nat_text if p.key in rewrite else p.nat_top_text)]
        nat_chains = [c.line for c in fixed.nat_chains] + mine
        nat_chains += [f":{name} - [0:0]" for name in stale]
        body = [r.line for r in fixed.nat_head] + body
        # Deletions go after every service rule and before the "last rule" of KUBE-SERVICES.
        body += [f"-X {name}" for name in stale]
        body += [r.line for r in fixed.nat_tail]
        tables = [(FILTER, [c.line for c in fixed.filter_chains], self.filter_lines)
                  ] if filter_too else []
        return _restore([*tables, (NAT, nat_chains, body)])

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
                        existing_nat: Iterable[str] | None = None) -> tuple[str, list[Argv]]:
        """What `kube-proxy --cleanup` does (CleanupLeftovers) to this ruleset's leftovers.

        Run the argv first (the jump deletions; "does not exist" is success, as upstream),
        then the restore text (flush and delete the chains). Like upstream, KUBE-FIREWALL
        and its jumps stay (they are kubelet's) unless kubelet_chains is set.
        `existing_nat`: the nat table's chains as the kernel has them (iptables-save);
        upstream removes every per-service chain found there — also those of Services
        this ruleset no longer has — and so does this when given them."""
        jumps = (*JUMPS, *(KUBELET_JUMPS if kubelet_chains else ()))
        argv = [j.argv("-D") for j in jumps]
        argv.append(["-t", "mangle", "-X", KUBE_PROXY_CANARY])
        names = existing_nat if existing_nat is not None else (c.name for c in self.nat_chains)
        services = sorted({n for n in names if is_service_chain(n)})
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


def _restore(tables: list[tuple[str, list[str], list[str]]]) -> str:
    lines: list[str] = []
    for name, chains, rules in tables:
        lines += [f"*{name}", *chains, *rules, "COMMIT"]
    return "\n".join(lines) + "\n"
