"""What a namespace's ruleset says about traced rules (pure): each base chain's hook and
priority (from `nft -j list ruleset`), and each iptables-nft rule as `iptables-save`
prints it — with its comment, which `nft monitor trace` leaves out — found by its
position in its chain (the n-th rule of a chain in nft's listing is the n-th `-A CHAIN`
line of iptables-save)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ChainKey = tuple[str, str, str]  # family, table, chain

# The trace table's own chains (labctl/net/nftrace), by name.
TRACE_HOOKS = {"pre": "prerouting", "out": "output", "ctpre": "prerouting",
               "ctout": "output"}
TRACE_PREFIX = "labctl-trace-"
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw", "security")


@dataclass
class RuleBook:
    hooks: dict[ChainKey, tuple[str, int]] = field(default_factory=dict)
    handles: dict[ChainKey, list[int]] = field(default_factory=dict)
    saved: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # table, chain
    # named verdict maps: (family, table, map) → [(key, verdict, comment)], nft's words
    maps: dict[ChainKey, list[tuple[str, str, str]]] = field(default_factory=dict)

    @classmethod
    def of(cls, nft_json: Mapping[str, Any], iptables_save: str = "") -> RuleBook:
        book = cls()
        for item in nft_json.get("nftables", []):
            if "chain" in item:
                c = item["chain"]
                key = (c["family"], c["table"], c["name"])
                if "hook" in c:
                    book.hooks[key] = (c["hook"], int(c.get("prio", 0)))
            elif "map" in item and item["map"].get("map") == "verdict":
                mp = item["map"]
                book.maps[(mp["family"], mp["table"], mp["name"])] = [
                    _element(e) for e in mp.get("elem", [])]
            elif "rule" in item:
                r = item["rule"]
                book.handles.setdefault((r["family"], r["table"], r["chain"]), []).append(
                    int(r["handle"]))
        table = ""
        for line in iptables_save.splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
            elif line.startswith("-A "):
                chain = line.split()[1]
                book.saved.setdefault((table, chain), []).append(line)
        return book

    def hook(self, family: str, table: str, chain: str) -> tuple[str, int]:
        if table.startswith(TRACE_PREFIX):
            return TRACE_HOOKS.get(chain, ""), -350
        return self.hooks.get((family, table, chain), ("", 0))

    def element(self, family: str, table: str, rule: str, target: str,
                key: Sequence[object]) -> str:
        """The element of a named verdict map (`… vmap @NAME`) that sent the packet to
        `target`, as nft lists it — with its comment, which names the Service."""
        m = re.search(r"vmap @(\S+)", rule)
        if not m or not target:
            return ""
        wanted = " . ".join(str(k) for k in key)
        found = [e for e in self.maps.get((family, table, m.group(1)), [])
                 if e[1].split()[-1] == target]
        best = next((e for e in found if e[0] == wanted), found[0] if len(found) == 1 else None)
        if best is None:
            return ""
        return f"{best[0]} : {best[1]}" + (f' comment "{best[2]}"' if best[2] else "")

    def quote(self, family: str, table: str, chain: str, handle: int, nft_text: str) -> str:
        """The rule as its ruleset shows it: iptables-save's line for an iptables-nft
        rule (when the chain's rules line up one to one), else nft's own text."""
        if family == "ip" and table in IPTABLES_TABLES:
            handles = self.handles.get((family, table, chain), [])
            saved = self.saved.get((table, chain), [])
            if handle in handles and len(handles) == len(saved):
                return saved[handles.index(handle)]
        return nft_text


def _element(pair: Sequence[Any]) -> tuple[str, str, str]:
    """One `[key, verdict]` pair of nft's JSON as (key, verdict, comment) in nft's words."""
    key, verdict = pair[0], pair[1]
    comment = ""
    if isinstance(key, dict) and "elem" in key:
        comment = key["elem"].get("comment", "")
        key = key["elem"]["val"]
    parts = key["concat"] if isinstance(key, dict) and "concat" in key else [key]
    kind, arg = next(iter(verdict.items())) if isinstance(verdict, dict) else (verdict, None)
    target = f" {arg['target']}" if isinstance(arg, dict) and "target" in arg else ""
    return " . ".join(str(p) for p in parts), f"{kind}{target}", comment
