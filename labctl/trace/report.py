"""A trace as text (pure): the probe and its result, then the request's and the reply's
walk, numbered hook by hook and grouped by the namespace they happened in."""

from __future__ import annotations

from typing import Any

from labctl.trace.walk import Direction, Step, Walk

OUTCOMES = {
    "connected": "connected",
    "answered": "answered",
    "refused": "refused",
    "reset": "reset",
    "unreachable": "unreachable",
    "no-answer": "no answer",
}


def header(protocol: str, source: dict[str, Any], dest_ip: str, dest_port: int,
           dest_what: str, lab: str, mode: str) -> list[str]:
    src = f"{source['ip']}:{source['port']}" if "port" in source else source["ip"]
    dst = f"{dest_ip}:{dest_port}" if dest_port else dest_ip
    kind = source.get("kind", "pod")
    origin = {"pod": f"pod {source.get('pod')} (on {source.get('node')})",
              "node": f"node {source.get('node')}"}.get(kind, "the external client")
    return [f"trace {protocol.upper()} {src} → {dst}",
            f"  from {origin} to {dest_what}; lab {lab}, proxy mode {mode}"]


def outcome_line(result: str, detail: str, seconds: float, reply: str = "") -> str:
    text = f"result: {OUTCOMES.get(result, result)} — {detail} ({seconds * 1000:.1f} ms)"
    if reply:
        text += f"; reply: {reply[:120]}" + ("…" if len(reply) > 120 else "")
    return text


def render_walk(w: Walk) -> list[str]:
    out: list[str] = []
    for direction in (w.request, w.reply):
        out += [""] + _direction(direction)
    if w.conntrack:
        out += ["", "conntrack (the translation each node recorded for the probe):"]
        for where, entries in w.conntrack.items():
            out += [f"  {where}: {e}" for e in entries]
    for note in w.notes:
        out += ["", f"note: {note}"]
    return out


def _direction(d: Direction) -> list[str]:
    out = [f"{d.name}: {d.packet} — {d.summary}"]
    if not d.steps:
        return out
    where = None
    for step in d.steps:
        if step.where != where:
            out.append(f" {step.where}")
            where = step.where
        out += _step(step)
    return out


def _step(s: Step) -> list[str]:
    ifaces = ", ".join(x for x in (f"in {s.iif}" if s.iif else "",
                                   f"out {s.oif}" if s.oif else "") if x)
    out = [f"  {s.n:>2}. {s.hook or '?':<12} {s.packet}" + (f"  ({ifaces})" if ifaces else "")]
    pad = " " * 7
    for chain in s.chains:
        for r in chain.rules:
            via = f" (map element {r.element})" if r.element else ""
            out.append(f"{pad}{r.table} {r.chain}: rule '{r.rule}' → {r.action}{via}")
        if not chain.rules:
            out.append(f"{pad}{chain.table} {chain.chain}: no rule matched; {chain.end or '?'}")
        elif chain.end.startswith("policy"):
            out.append(f"{pad}{chain.table} {chain.chain}: {chain.end}")
    out += [f"{pad}{note}" if not note.startswith(("arrived", "left", "rejected", "dropped",
                                                   "delivered", "redirected"))
            else f"{pad}⇒ {note}" for note in s.notes]
    return out
