"""The nftables objects kube-proxy writes, and the exact `nft -f` line for each operation.

This mirrors the knftables library kube-proxy uses (kubernetes-sigs/knftables,
objects.go / transaction.go): an `Op` is one verb on one object and `line(op)` is the
line knftables writes for it. `NftState` applies operations the way the kernel does
(and knftables' Fake): it refuses what nft would refuse (a rule jumping to a missing
chain, a map element whose key exists with another value, deleting a busy chain), so
every view built on it is "what the table holds after this transaction".

Pure: no I/O. IPv4 only (table `ip kube-proxy`), like the rest of labctl.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

FAMILY = "ip"
TABLE = "kube-proxy"
_WHERE = f"{FAMILY} {TABLE}"
_REF_CHAIN = re.compile(r"\b(?:jump|goto) (\S+)")
_REF_SET = re.compile(r"@([A-Za-z0-9_./-]+)")


class NftError(ValueError):
    """An operation nft would refuse on the current state."""


@dataclass(frozen=True)
class Table:
    comment: str = ""


@dataclass(frozen=True)
class Chain:
    name: str
    type: str = ""  # base chains only: "filter" | "nat"
    hook: str = ""
    priority: int = 0
    comment: str = ""

    @property
    def is_base(self) -> bool:
        return bool(self.type)


@dataclass(frozen=True)
class Rule:
    chain: str
    text: str
    comment: str = ""

    @property
    def full(self) -> str:
        """The rule as written after the chain name (comment included)."""
        return f"{self.text} comment {quote(self.comment)}" if self.comment else self.text


@dataclass(frozen=True)
class NftSet:
    """A named set or map (knftables Set / Map)."""

    name: str
    type: str = ""
    is_map: bool = False
    flags: tuple[str, ...] = ()
    timeout: int | None = None  # seconds
    comment: str = ""

    @property
    def kind(self) -> str:
        return "map" if self.is_map else "set"


@dataclass(frozen=True)
class Element:
    container: str  # the set or map it belongs to
    key: tuple[str, ...]
    value: tuple[str, ...] = ()  # maps only; a delete names the key alone
    comment: str = ""

    @property
    def key_text(self) -> str:
        return " . ".join(self.key)

    @property
    def value_text(self) -> str:
        return " . ".join(self.value)


NftObject = Table | Chain | Rule | NftSet | Element


@dataclass(frozen=True)
class Op:
    verb: str  # add | flush | delete
    obj: NftObject


def quote(text: str) -> str:
    """Go's %q for the plain strings kube-proxy uses (knftables quotes comments so)."""
    return json.dumps(text, ensure_ascii=False)


# ----------------------------------------------------------------- writing


def line(op: Op) -> str:
    """The line knftables' writeOperation produces for one operation."""
    obj = op.obj
    if isinstance(obj, Table):
        return _table_line(op.verb, obj)
    if isinstance(obj, Chain):
        return _chain_line(op.verb, obj)
    if isinstance(obj, Rule):
        return f"{op.verb} rule {_WHERE} {obj.chain} {obj.full}"
    if isinstance(obj, NftSet):
        return _set_line(op.verb, obj)
    return _element_line(op.verb, obj)


def lines(ops: Iterable[Op]) -> str:
    return "".join(line(op) + "\n" for op in ops)


def _table_line(verb: str, table: Table) -> str:
    out = f"{verb} table {_WHERE}"
    if verb == "add" and table.comment:
        out += f" {{ comment {quote(table.comment)} ; }}"
    return out


def _chain_line(verb: str, chain: Chain) -> str:
    out = f"{verb} chain {_WHERE} {chain.name}"
    if verb != "add" or not (chain.is_base or chain.comment):
        return out
    spec = ""
    if chain.is_base:
        # knftables writes the priority as a number: older nft rejects some named
        # priorities in some hooks (e.g. "dstnat" in output).
        spec += f" type {chain.type} hook {chain.hook} priority {chain.priority} ;"
    if chain.comment:
        spec += f" comment {quote(chain.comment)} ;"
    return f"{out} {{{spec} }}"


def _set_line(verb: str, s: NftSet) -> str:
    out = f"{verb} {s.kind} {_WHERE} {s.name}"
    if verb != "add":
        return out
    spec = f" type {s.type} ;"
    if s.flags:
        spec += f" flags {','.join(s.flags)} ;"
    if s.timeout is not None:
        spec += f" timeout {s.timeout}s ;"
    if s.comment:
        spec += f" comment {quote(s.comment)} ;"
    return f"{out} {{{spec} }}"


def _element_line(verb: str, e: Element) -> str:
    out = f"{verb} element {_WHERE} {e.container} {{ {e.key_text}"
    if verb == "add":
        if e.comment:
            out += f" comment {quote(e.comment)}"
        if e.value:
            out += f" : {e.value_text}"
    return out + " }"


# ----------------------------------------------------------------- state


@dataclass
class NftState:
    """The `ip kube-proxy` table as nft leaves it after a sequence of operations."""

    table: Table | None = None
    chains: dict[str, Chain] = field(default_factory=dict)
    rules: dict[str, list[Rule]] = field(default_factory=dict)
    sets: dict[str, NftSet] = field(default_factory=dict)  # sets and maps
    elements: dict[str, dict[tuple[str, ...], Element]] = field(default_factory=dict)

    @classmethod
    def of(cls, ops: Iterable[Op]) -> NftState:
        state = cls()
        state.apply_all(ops)
        return state

    def apply_all(self, ops: Iterable[Op]) -> None:
        for op in ops:
            try:
                self.apply(op)
            except NftError as err:
                raise NftError(f"{line(op)}: {err}") from None

    def apply(self, op: Op) -> None:
        obj = op.obj
        if isinstance(obj, Table):
            self._table(op.verb, obj)
        elif self.table is None:
            raise NftError("no such table")
        elif isinstance(obj, Chain):
            self._chain(op.verb, obj)
        elif isinstance(obj, Rule):
            self._rule(obj)
        elif isinstance(obj, NftSet):
            self._set(op.verb, obj)
        else:
            self._element(op.verb, obj)

    def _table(self, verb: str, table: Table) -> None:
        if verb == "add":
            self.table = self.table or table
            return
        if self.table is None:
            raise NftError("no such table")
        self.table = None  # delete: the table goes with everything in it
        for held in (self.chains, self.rules, self.sets, self.elements):
            held.clear()

    def _chain(self, verb: str, chain: Chain) -> None:
        old = self.chains.get(chain.name)
        if verb == "add":
            # Re-declaring a chain is a no-op, but a base chain's hook and priority
            # cannot change in place (hence kube-proxy's add+delete on its first sync).
            if old is not None and chain.is_base and old != chain:
                raise NftError("chain exists with another type, hook or priority")
            if old is None:
                self.chains[chain.name] = chain
                self.rules[chain.name] = []
            return
        if old is None:
            raise NftError("no such chain")
        if verb == "flush":
            self.rules[chain.name] = []
            return
        # The kernel deletes a chain with its rules, but not while another chain's rule
        # or a map element still jumps to it (EBUSY).
        if chain.name in self.chain_references(excluding=chain.name):
            raise NftError("chain is busy")
        del self.chains[chain.name], self.rules[chain.name]

    def _rule(self, rule: Rule) -> None:
        if rule.chain not in self.chains:
            raise NftError("no such chain")
        self._check_refs(rule.text)
        self.rules[rule.chain].append(rule)

    def _set(self, verb: str, s: NftSet) -> None:
        old = self.sets.get(s.name)
        if verb == "add":
            if old is not None and (old.type, old.is_map) != (s.type, s.is_map):
                raise NftError("set exists with another type")
            if old is None:
                self.sets[s.name] = s
                self.elements[s.name] = {}
            return
        if old is None:
            raise NftError("no such set")
        if verb == "flush":
            self.elements[s.name] = {}
            return
        if s.name in self.set_references():
            raise NftError("set is busy")
        del self.sets[s.name], self.elements[s.name]

    def _element(self, verb: str, e: Element) -> None:
        if e.container not in self.sets:
            raise NftError("no such set")
        held = self.elements[e.container]
        old = held.get(e.key)
        if verb == "delete":
            if old is None:
                raise NftError("no such element")
            del held[e.key]
            return
        if old is not None:
            if old.value != e.value:  # the kernel answers EBUSY; kube-proxy deletes first
                raise NftError("element exists with another value")
            return
        self._check_refs(e.value_text)
        held[e.key] = e

    def _check_refs(self, text: str) -> None:
        for chain in _REF_CHAIN.findall(text):
            if chain not in self.chains:
                raise NftError(f"no such chain {chain}")
        for name in _REF_SET.findall(text):
            if name not in self.sets:
                raise NftError(f"no such set {name}")

    # ------------------------------------------------------------- reading

    def chain_references(self, excluding: str = "") -> set[str]:
        """Chains something jumps to: rules (incl. anonymous vmaps) of chains other than
        `excluding`, and map elements."""
        refs = {c for name, rules in self.rules.items() if name != excluding for r in rules
                for c in _REF_CHAIN.findall(r.text)}
        refs |= {c for held in self.elements.values() for e in held.values()
                 for c in _REF_CHAIN.findall(e.value_text)}
        return refs

    def set_references(self) -> set[str]:
        return {n for rules in self.rules.values() for r in rules
                for n in _REF_SET.findall(r.text)}

    def rule_lines(self, chain: str) -> list[str]:
        return [r.full for r in self.rules.get(chain, [])]

    def dump(self) -> str:
        """The table as `add` lines (knftables' Fake.Dump form): no flush, no delete."""
        ops: list[Op] = []
        if self.table is not None:
            ops.append(Op("add", self.table))
        ops += [Op("add", c) for c in self.chains.values()]
        ops += [Op("add", s) for s in self.sets.values()]
        ops += [Op("add", r) for rules in self.rules.values() for r in rules]
        ops += [Op("add", e) for held in self.elements.values() for e in held.values()]
        return lines(ops)
