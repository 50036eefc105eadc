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
* `render_update(old, inp)` — the ruleset for `inp` and that same transaction, in time
  proportional to the Services that changed (unchanged Services' rules are reused, and
  only the changed Services' elements, with any sharing their keys, are diffed);
* `cleanup_payload()` — `kube-proxy --cleanup`;
* `for_service(ns, name)` — one Service's objects as `nft list`-like text;
* `objects()` / `dump()` — the resulting table: an `NftState` (chains with their rules,
  sets and maps with their elements) / `add` lines as knftables' Fake.Dump prints them.

Services are emitted sorted by namespace, name and port order (upstream walks a Go
map); within a Service the order is upstream's. See ../shared/reference/kube-proxy.md §4,
nftables_setup.py (the fixed part) and nftables_services.py (the per-Service part).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from labctl.proxy.base import ProxyConfig, ProxyInput, ServiceKey, ServicePortEndpoints
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

__all__ = ["NftRuleset", "NftState", "render", "render_update"]

# ----------------------------------------------------------------- elements

ElementKey = tuple[str, tuple[str, ...]]  # (set or map, key)
Value = tuple[str, ...]


class ElementStore:
    """kube-proxy's nftElementStorage: an element is written only when it is missing or
    its value changed (then deleted and re-added); what nobody ensured is deleted.

    `held` is what the table holds now (it is taken over and updated in place)."""

    def __init__(self, held: dict[ElementKey, Value] | None = None) -> None:
        self.held: dict[ElementKey, Value] = {} if held is None else held
        self.ensured: set[ElementKey] = set()

    def ensure(self, e: Element) -> list[Op]:
        k = (e.container, e.key)
        self.ensured.add(k)
        old = self.held.get(k)
        if old == e.value:
            return []
        self.held[k] = e.value
        if old is None:
            return [Op("add", e)]
        return [Op("delete", Element(e.container, e.key)), Op("add", e)]

    def cleanup(self, candidates: Iterable[ElementKey]) -> list[Op]:
        """Delete those of `candidates` (keys held before the sync) nobody ensured."""
        keys = sorted((k for k in candidates if k not in self.ensured),
                      key=lambda k: (ELEMENT_CONTAINERS.index(k[0]), k[1]))
        for k in keys:
            del self.held[k]
        return [Op("delete", Element(name, key)) for name, key in keys]


Owners = tuple[tuple[ServiceKey, Value], ...]


@dataclass
class ElementIndex:
    """The elements the table holds once a ruleset is loaded, and which Services add
    them: what lets a sync look at the elements of changed Services only.

    values: the value each key ends up with (the last Service's to write it);
    owners: per key, each (Service, value) that writes it;
    conflicts: the keys whose owners disagree on the value (each sync rewrites them)."""

    values: dict[ElementKey, Value]
    owners: dict[ElementKey, Owners]
    conflicts: set[ElementKey]

    @classmethod
    def of(cls, services: Iterable[ServiceRules]) -> ElementIndex:
        values: dict[ElementKey, Value] = {}
        owners: dict[ElementKey, Owners] = {}
        conflicts: set[ElementKey] = set()
        for svc in services:  # (the hot loop of a first update: kept plain)
            skey = (svc.namespace, svc.name)
            for step in svc.steps:
                if type(step) is not Element:
                    continue
                k, v = (step.container, step.key), step.value
                values[k] = v
                held = owners.get(k)
                if held is None:
                    owners[k] = ((skey, v),)
                elif (skey, v) not in held:
                    if any(w != v for _, w in held):
                        conflicts.add(k)
                    owners[k] = (*held, (skey, v))
        return cls(values, owners, conflicts)

    def owners_after(self, old: dict[ServiceKey, ServiceRules],
                     new: dict[ServiceKey, ServiceRules], changed: Iterable[ServiceKey],
                     ) -> tuple[dict[ElementKey, Owners], set[ElementKey], set[ElementKey]]:
        """owners and conflicts once the `changed` Services are replaced by their `new`
        version (or removed), and the keys those Services write(wrote)."""
        owners = dict(self.owners)
        touched: set[ElementKey] = set()
        for skey in changed:
            if (before := old.get(skey)) is not None:
                for k, _ in before.element_pairs:
                    held = owners.get(k)
                    if held is not None:  # (None: a second element with this key)
                        rest = tuple(o for o in held if o[0] != skey)
                        if rest:
                            owners[k] = rest
                        else:
                            del owners[k]
                    touched.add(k)
        for skey in changed:
            if (after := new.get(skey)) is not None:
                for k, v in after.element_pairs:
                    held = owners.get(k, ())
                    if (skey, v) not in held:
                        owners[k] = (*held, (skey, v))
                    touched.add(k)
        conflicts = set(self.conflicts)
        for k in touched:
            held = owners.get(k, ())
            if any(w != held[0][1] for _, w in held):
                conflicts.add(k)
            else:
                conflicts.discard(k)
        return owners, conflicts, touched


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

    @functools.cached_property
    def chain_set(self) -> frozenset[str]:
        return frozenset(s.name for s in self.steps if isinstance(s, Chain))

    @functools.cached_property
    def set_names(self) -> frozenset[str]:
        return frozenset(s.name for s in self.steps if isinstance(s, NftSet))

    @functools.cached_property
    def elements(self) -> tuple[Element, ...]:
        return tuple(s for s in self.steps if isinstance(s, Element))

    @functools.cached_property
    def element_pairs(self) -> tuple[tuple[ElementKey, Value], ...]:
        return tuple(((e.container, e.key), e.value) for e in self.elements)


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


@dataclass
class _Sync:
    """One sync transaction and what it leaves behind."""

    ops: list[Op]
    stale: tuple[str, ...]  # chains flushed, to delete at the next sync
    stale_owners: dict[str, ServiceKey]
    index: ElementIndex | None  # the table's elements afterwards (None: built if needed)


@dataclass(eq=False)
class NftRuleset:
    config: ProxyConfig
    services: tuple[ServiceRules, ...]
    # Chains the last update_payload() left flushed but not deleted (see there).
    stale_left: tuple[str, ...] = ()
    _state: NftState | None = field(default=None, repr=False)
    _stale_owners: dict[str, ServiceKey] = field(default_factory=dict, repr=False)
    _index: ElementIndex | None = field(default=None, repr=False)

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

    @functools.cached_property
    def by_key(self) -> dict[ServiceKey, ServiceRules]:
        return {svc.key: svc for svc in self.services}

    def element_index(self) -> ElementIndex:
        if self._index is None:
            self._index = ElementIndex.of(self.services)
        return self._index

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
        return self._sync(old, full_sync).ops

    def _changed(self, old: NftRuleset) -> set[ServiceKey]:
        before, now = old.by_key, self.by_key
        changed = {k for k, svc in now.items() if (prev := before.get(k)) is None
                   or (prev is not svc and prev.ports != svc.ports)}
        if len(now) - len(changed & now.keys()) != len(before):
            changed |= before.keys() - now.keys()
        return changed

    def _sync(self, old: NftRuleset, full_sync: bool = False,
              changed: set[ServiceKey] | None = None) -> _Sync:
        """The transaction, touching the changed Services only (all on a full sync).

        `changed`: the Services whose ports differ from old's (computed if None). The
        names of a Service's chains and sets contain its namespace and name, so what is
        stale is found Service by Service. Elements: those of changed Services, and any
        other element with the same key (or whose owners disagree) are ensured in
        Service order, exactly as a walk over every element would ensure them; the
        rest are all unchanged, and ensuring them would write nothing."""
        full = full_sync or old.config != self.config
        before, now = old.by_key, self.by_key
        if full:
            changed = before.keys() | now.keys()
        elif changed is None:
            changed = self._changed(old)
        # Chains flushed by the previous sync are deleted now: kube-proxy never deletes
        # a chain in the transaction that drops the last map element pointing at it
        # (kernels < 6.2 would still see it as busy); it does so at a later sync. One
        # in use again is kept, as kube-proxy drops it from its stale list.
        ops = [Op("delete", Chain(c)) for c in old.stale_left if not self._uses(c, old)]
        if full:
            ops += setup_ops(self.config, first_sync=False)
        old_index = old.element_index()
        store = ElementStore(dict(old_index.values))
        index: ElementIndex | None = None
        if full:
            for svc in self.services:
                ops += _service_ops(svc, store, rewrite=True)
            candidates: Iterable[ElementKey] = old_index.values.keys()
        else:
            owners, conflicts, touched = old_index.owners_after(before, now, changed)
            relevant = touched | conflicts
            visit = {skey for k in relevant for skey, _ in owners.get(k, ())} - changed
            for svc in self.services:
                if svc.key in changed:
                    ops += _service_ops(svc, store, rewrite=True)
                elif svc.key in visit:
                    for e in svc.elements:
                        if (e.container, e.key) in relevant:
                            ops += store.ensure(e)
            candidates = {k for skey in changed if (prev := before.get(skey)) is not None
                          for k, _ in prev.element_pairs}
            index = ElementIndex(store.held, owners, conflicts)
        stale_owners: dict[str, ServiceKey] = {}
        gone_sets: set[str] = set()
        for skey in changed:
            if (prev := before.get(skey)) is None:
                continue
            svc = now.get(skey)
            for c in prev.chain_set if svc is None else prev.chain_set - svc.chain_set:
                stale_owners[c] = skey
            gone_sets |= prev.set_names if svc is None else prev.set_names - svc.set_names
        stale = tuple(sorted(stale_owners))
        ops += [Op("flush", Chain(c)) for c in stale]
        ops += [Op("delete", NftSet(name)) for name in sorted(gone_sets)]
        ops += store.cleanup(candidates)  # (also drops them from index.values)
        return _Sync(ops, stale, stale_owners, index)

    def _uses(self, chain: str, old: NftRuleset) -> bool:
        """Whether this ruleset uses `chain` (one of old's stale_left)."""
        owner = old._stale_owners.get(chain)
        if owner is None:  # (a stale_left not set by update_payload / render_update)
            return chain in self.active_chains()
        svc = self.by_key.get(owner)
        return svc is not None and chain in svc.chain_set

    def update_payload(self, old: NftRuleset, full_sync: bool = False) -> str:
        """The partial-sync transaction from `old` to this ruleset.

        Stale service/endpoint chains are flushed here and deleted by the next
        update_payload() called on a ruleset with this one as `old` (this ruleset
        remembers them in `stale_left`), as kube-proxy deletes them at its next sync.
        """
        return self._apply(self._sync(old, full_sync))

    def _apply(self, sync: _Sync) -> str:
        self.stale_left, self._stale_owners = sync.stale, sync.stale_owners
        if sync.index is not None:
            self._index = sync.index
        return lines(sync.ops)

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


def _service_rules(key: ServiceKey, ports: tuple[ServicePortEndpoints, ...],
                   ctx: Context) -> ServiceRules:
    return ServiceRules(key[0], key[1], ports,
                        tuple(step for pe in ports for step in PortRules(pe, ctx).steps()))


def render(inp: ProxyInput) -> NftRuleset:
    """The nftables ruleset kube-proxy programs on inp.config's node."""
    ctx = context(inp.config)
    # build_input's order: namespace, name, then port order
    return NftRuleset(inp.config, tuple(_service_rules(key, ports, ctx)
                                        for key, ports in inp.services.items()))


def render_update(old: NftRuleset, inp: ProxyInput) -> tuple[NftRuleset, str]:
    """The ruleset for `inp` and the sync transaction after `old`, in time proportional
    to what changed: only Services whose ServicePorts differ from those `old` was
    rendered from are rendered again, and only their elements (and elements sharing a
    key with them) are diffed. Equal to `(new, new.update_payload(old))` with
    `new = render(inp)`; `new.stale_left` is set the same way.

    A changed ProxyConfig renders everything and sends a full sync, as a restart would."""
    if inp.config != old.config:
        new = render(inp)
        return new, new.update_payload(old)
    ctx = context(inp.config)
    before = old.by_key
    services = []
    changed: set[ServiceKey] = set()
    for key, ports in inp.services.items():
        prev = before.get(key)
        if prev is None or (prev.ports is not ports and prev.ports != ports):
            prev = _service_rules(key, ports, ctx)
            changed.add(key)
        services.append(prev)
    if len(services) - len(changed) != len(before):  # some Service is gone
        changed |= before.keys() - inp.services.keys()
    new = NftRuleset(inp.config, tuple(services))
    return new, new._apply(new._sync(old, changed=changed))
