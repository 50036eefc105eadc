"""kube-proxy's nftables mode as a pure renderer.

`render(ProxyInput)` returns an `NftRuleset`: the table `ip kube-proxy` that upstream
kube-proxy programs on one node — pkg/proxy/nftables/proxier.go of kubernetes/kubernetes
main at 531be81208e2 (the base-chain layout with `filter-prerouting-pre-dnat` /
`filter-output-pre-dnat` at dstnat-10 and the other filter chains at priority 0), with
each line as the knftables library writes it. It is kept as ordered operations from
which every view is derived:

* `payload()` — the `nft -f` input of kube-proxy's first full sync from an empty table;
* `update_payload(old)` — the transaction of kube-proxy's next sync when the kernel
  holds `old` (`update_operations` gives the same as operations);
* `cleanup_payload()` — `kube-proxy --cleanup`;
* `for_service(ns, name)` — one Service's objects as `nft list`-like text;
* `objects()` / `dump()` — the resulting table: an `NftState` (chains with their rules,
  sets and maps with their elements) / `add` lines as knftables' Fake.Dump prints them.

Services are emitted sorted by namespace, name and port order (upstream walks a Go
map); within a Service the order is upstream's. See ../shared/reference/kube-proxy.md §4,
nftables_setup.py (the fixed part) and nftables_services.py (the per-Service part).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from labctl.proxy.base import ProxyConfig, ProxyInput, ServicePortEndpoints
from labctl.proxy.nftables_objects import (
    FAMILY,
    TABLE,
    Chain,
    Element,
    NftSet,
    NftState,
    Op,
    Rule,
    lines,
    quote,
)
from labctl.proxy.nftables_services import Context, PortRules, Step, ipv4
from labctl.proxy.nftables_setup import ELEMENT_CONTAINERS, SETS, ensure_chain, setup_ops

__all__ = ["NftRuleset", "NftState", "render"]

# ----------------------------------------------------------------- elements


class ElementStore:
    """kube-proxy's nftElementStorage: an element is written only when it is missing or
    its value changed (then deleted and re-added); what nobody ensured is deleted."""

    def __init__(self, state: NftState | None = None) -> None:
        self.held: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}
        if state is not None:
            for name in ELEMENT_CONTAINERS:
                for key, e in state.elements.get(name, {}).items():
                    self.held[(name, key)] = e.value
        self.leftover = set(self.held)

    def ensure(self, e: Element) -> list[Op]:
        k = (e.container, e.key)
        self.leftover.discard(k)
        if k in self.held and self.held[k] == e.value:
            return []
        ops = [Op("delete", Element(e.container, e.key))] if k in self.held else []
        self.held[k] = e.value
        return [*ops, Op("add", e)]

    def cleanup(self) -> list[Op]:
        keys = sorted(self.leftover, key=lambda k: (ELEMENT_CONTAINERS.index(k[0]), k[1]))
        self.leftover.clear()
        return [Op("delete", Element(name, key)) for name, key in keys]


# ----------------------------------------------------------------- the ruleset


@dataclass(frozen=True)
class ServiceRules:
    """One Service's steps (all its ports), and the input they came from."""

    namespace: str
    name: str
    ports: tuple[ServicePortEndpoints, ...]
    steps: tuple[Step, ...]

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def chains(self) -> list[str]:
        return list(dict.fromkeys(s.name for s in self.steps if isinstance(s, Chain)))

    def sets(self) -> list[NftSet]:
        return [s for s in self.steps if isinstance(s, NftSet)]


def _service_ops(svc: ServiceRules, store: ElementStore, rewrite: bool) -> list[Op]:
    ops: list[Op] = []
    for step in svc.steps:
        if isinstance(step, Element):
            ops += store.ensure(step)
        elif not rewrite:
            continue  # an unchanged Service keeps its chains and sets as they are
        elif isinstance(step, Chain):
            ops += ensure_chain(step)
        else:
            ops.append(Op("add", step))
    return ops


@dataclass(eq=False)
class NftRuleset:
    config: ProxyConfig
    services: tuple[ServiceRules, ...]
    # Chains the last update_payload() left flushed but not deleted (see there).
    stale_left: tuple[str, ...] = ()
    _state: NftState | None = field(default=None, repr=False)

    # ------------------------------------------------------------- full sync

    def operations(self) -> list[Op]:
        """One full sync from an empty table, operation by operation."""
        store = ElementStore()
        ops = setup_ops(self.config, first_sync=True)
        for svc in self.services:
            ops += _service_ops(svc, store, rewrite=True)
        return ops

    def payload(self) -> str:
        return lines(self.operations())

    def objects(self) -> NftState:
        """The table after payload(): chains with their rules, sets and maps with their
        elements (what `nft list table ip kube-proxy` would show)."""
        if self._state is None:
            self._state = NftState.of(self.operations())
        return self._state

    def dump(self) -> str:
        return self.objects().dump()

    # ------------------------------------------------------------- partial sync

    def active_chains(self) -> set[str]:
        return {c for svc in self.services for c in svc.chains()}

    def stale_chains(self, old: NftRuleset) -> tuple[str, ...]:
        """Service and endpoint chains `old` had and this ruleset no longer uses."""
        return tuple(sorted(old.active_chains() - self.active_chains()))

    def update_operations(self, old: NftRuleset, full_sync: bool = False) -> list[Op]:
        """kube-proxy's sync when the kernel holds `old`: only changed Services' chains
        are rewritten, elements are diffed, stale chains flushed, stale affinity sets
        deleted. A changed ProxyConfig forces a full sync, as a restart would."""
        full = full_sync or old.config != self.config
        # Chains flushed by the previous sync are deleted now: kube-proxy never deletes
        # a chain in the transaction that drops the last map element pointing at it
        # (kernels < 6.2 would still see it as busy); it does so at a later sync. One
        # in use again is kept, as kube-proxy drops it from its stale list.
        active = self.active_chains()
        ops = [Op("delete", Chain(c)) for c in old.stale_left if c not in active]
        if full:
            ops += setup_ops(self.config, first_sync=False)
        store = ElementStore(old.objects())
        before = {svc.key: svc.ports for svc in old.services}
        for svc in self.services:
            ops += _service_ops(svc, store, full or before.get(svc.key) != svc.ports)
        ops += [Op("flush", Chain(c)) for c in self.stale_chains(old)]
        new_sets = {s.name for svc in self.services for s in svc.sets()}
        old_sets = {s.name for svc in old.services for s in svc.sets()}
        ops += [Op("delete", NftSet(name)) for name in sorted(old_sets - new_sets)]
        return ops + store.cleanup()

    def update_payload(self, old: NftRuleset, full_sync: bool = False) -> str:
        """The partial-sync transaction from `old` to this ruleset.

        Stale service/endpoint chains are flushed here and deleted by the next
        update_payload() called on a ruleset with this one as `old` (this ruleset
        remembers them in `stale_left`), as kube-proxy deletes them at its next sync.
        """
        ops = self.update_operations(old, full_sync)
        self.stale_left = self.stale_chains(old)
        return lines(ops)

    def cleanup_payload(self, if_exists: bool = False) -> str:
        """kube-proxy --cleanup: delete the table. nft fails when the table is absent
        (kube-proxy ignores that error); `if_exists` adds it first so it cannot."""
        table = f"table {FAMILY} {TABLE}"
        return (f"add {table}\n" if if_exists else "") + f"delete {table}\n"

    # ------------------------------------------------------------- one Service

    def service(self, namespace: str, name: str) -> ServiceRules | None:
        return next((s for s in self.services if s.key == (namespace, name)), None)

    def for_service(self, namespace: str, name: str) -> str:
        """One Service's chains, rules, affinity sets and map elements, `nft list`-like."""
        svc = self.service(namespace, name)
        if svc is None or not svc.steps:
            return ""
        blocks = [*_element_blocks(svc), *(_set_block(s) for s in svc.sets()),
                  *_chain_blocks(svc)]
        body = "\n\n".join(blocks)
        return f"table {FAMILY} {TABLE} {{\n{body}\n}}\n"


def _element_blocks(svc: ServiceRules) -> Iterator[str]:
    for name in ELEMENT_CONTAINERS:
        seen: dict[tuple[str, ...], Element] = {}
        for step in svc.steps:
            if isinstance(step, Element) and step.container == name:
                seen.setdefault(step.key, step)
        if seen:
            yield _set_block(SETS[name], list(seen.values()))


def _element_text(e: Element) -> str:
    text = e.key_text + (f" comment {quote(e.comment)}" if e.comment else "")
    return text + (f" : {e.value_text}" if e.value else "")


def _set_block(s: NftSet, elements: Iterable[Element] = ()) -> str:
    out = [f"\t{s.kind} {s.name} {{", f"\t\ttype {s.type}"]
    if s.flags:
        out.append(f"\t\tflags {','.join(s.flags)}")
    if s.timeout is not None:
        out.append(f"\t\ttimeout {s.timeout}s")
    if s.comment:
        out.append(f"\t\tcomment {quote(s.comment)}")
    texts = [_element_text(e) for e in elements]
    if texts:
        joined = ",\n\t\t\t     ".join(texts)
        out.append(f"\t\telements = {{ {joined} }}")
    return "\n".join([*out, "\t}"])


_READING_ORDER = ("service-", "local-", "external-", "firewall-", "endpoint-")


def _chain_blocks(svc: ServiceRules) -> Iterator[str]:
    # Read from where traffic enters: the policy chains, then the endpoints.
    order = sorted(svc.chains(), key=lambda c: next(
        (i for i, p in enumerate(_READING_ORDER) if c.startswith(p)), len(_READING_ORDER)))
    for chain in order:
        rules = [s.full for s in svc.steps if isinstance(s, Rule) and s.chain == chain]
        yield "\n".join([f"\tchain {chain} {{", *(f"\t\t{r}" for r in rules), "\t}"])


# ----------------------------------------------------------------- render


def context(cfg: ProxyConfig) -> Context:
    node_ip = next((ip for ip in map(ipv4, cfg.node_ips) if ip), "")
    return Context(pod_cidr=cfg.cluster_cidr, masquerade_all=cfg.masquerade_all,
                   node_ip=node_ip)


def render(inp: ProxyInput) -> NftRuleset:
    """The nftables ruleset kube-proxy programs on inp.config's node."""
    ctx = context(inp.config)
    grouped: dict[tuple[str, str], list[ServicePortEndpoints]] = {}
    for pe in inp.ports:  # build_input's order: namespace, name, then port order
        grouped.setdefault((pe.info.namespace, pe.info.name), []).append(pe)
    services = tuple(
        ServiceRules(ns, name, tuple(ports),
                     tuple(step for pe in ports for step in PortRules(pe, ctx).steps()))
        for (ns, name), ports in grouped.items())
    return NftRuleset(inp.config, services)
