"""nftables-mode payloads against the real nft and kernel, in a throw-away namespace.

Every golden payload passes `nft -c -f` and loads, and the kernel then holds the chains,
sets, rules and elements `objects()` predicts; partial syncs and cleanup apply in order.
Every nft runs inside `it-nft-<pid>` (created and deleted here): the host's own ruleset
is never read or changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from labctl.proxy import nftables
from labctl.proxy.base import build_input
from tests.unit.test_proxy_incremental import CHANGES, world
from tests.unit.test_proxy_incremental import CONFIG as INCREMENTAL_CONFIG
from tests.unit.test_proxy_nftables import CASES, A, B, C, render_case, rendered, web

pytestmark = pytest.mark.root

NS = f"it-nft-{os.getpid()}"


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN): creates a network namespace"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"needs the {tool} binary (apt-get install -y {package})"
    return None


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


def nft(ns: str, *args: str, stdin: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", "netns", "exec", ns, "nft", *args], input=stdin,
                          capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"nft {' '.join(args)} failed: {proc.stderr.strip()}\n--- input:\n{stdin}")
    return proc


def kernel_table(ns: str) -> dict[str, object]:
    """Chains with their rule counts, sets/maps with their elements, as nft lists them."""
    data = json.loads(nft(ns, "-j", "list", "table", "ip", "kube-proxy").stdout)
    chains: dict[str, int] = {}
    sets: dict[str, int] = {}
    for item in data["nftables"]:
        if "chain" in item:
            chains.setdefault(item["chain"]["name"], 0)
        elif "rule" in item:
            chains[item["rule"]["chain"]] = chains.get(item["rule"]["chain"], 0) + 1
        elif "set" in item or "map" in item:
            obj = item.get("set") or item["map"]
            sets[obj["name"]] = len(obj.get("elem", []))
    return {"chains": chains, "sets": sets}


def predicted(rs: nftables.NftRuleset, extra_empty_chains: tuple[str, ...] = ()
              ) -> dict[str, object]:
    state = rs.objects()
    chains = {name: len(rules) for name, rules in state.rules.items()}
    chains.update({c: 0 for c in extra_empty_chains})
    return {"chains": chains, "sets": {n: len(e) for n, e in state.elements.items()}}


def load(ns: str, payload: str) -> None:
    nft(ns, "-c", "-f", "-", stdin=payload)
    nft(ns, "-f", "-", stdin=payload)


def clean(ns: str, rs: nftables.NftRuleset) -> None:
    nft(ns, "-f", "-", stdin=rs.cleanup_payload())
    assert "kube-proxy" not in nft(ns, "list", "tables").stdout


@pytest.mark.parametrize("case", CASES)
def test_golden_payload_loads_as_predicted(netns: str, case: str) -> None:
    rs = render_case(case)
    load(netns, rs.payload())
    try:
        assert kernel_table(netns) == predicted(rs)
    finally:
        clean(netns, rs)


def test_partial_syncs_apply_and_stale_chains_go_at_the_next_sync(netns: str) -> None:
    steps = [rendered(web(A, B, C), web(A, name="api", ip="10.96.0.21")),
             rendered(web(A, B), web(A, name="api", ip="10.96.0.21")),  # endpoint gone
             rendered(web(A, B, affinity=True)),  # api removed, affinity on
             rendered(web()),  # no endpoints left
             rendered(web())]  # nothing changed: only the deferred deletions
    load(netns, steps[0].payload())
    try:
        for old, new in zip(steps, steps[1:], strict=False):
            payload = new.update_payload(old)
            load(netns, payload)
            assert kernel_table(netns) == predicted(new, new.stale_left), payload
    finally:
        clean(netns, steps[-1])


def test_incremental_updates_apply_as_predicted(netns: str) -> None:
    """render_update's transactions, one after the other, for every kind of change of
    the incremental tests (elements shared by two Services included): each loads, and
    the kernel then holds the new ruleset's table (plus the chains flushed, not yet
    deleted)."""
    w = world()
    inp = build_input(INCREMENTAL_CONFIG, *w)
    rs = nftables.render(inp)
    load(netns, rs.payload())
    try:
        for name, change in CHANGES.items():
            w = change(w)
            inp = build_input(INCREMENTAL_CONFIG, *w, previous=inp)
            rs, payload = nftables.render_update(rs, inp)
            load(netns, payload)
            assert kernel_table(netns) == predicted(rs, rs.stale_left), name
    finally:
        clean(netns, rs)


def test_cleanup_if_exists_succeeds_without_a_table(netns: str) -> None:
    rs = rendered(web(A))
    assert nft(netns, "-f", "-", stdin=rs.cleanup_payload(), check=False).returncode != 0
    nft(netns, "-f", "-", stdin=rs.cleanup_payload(if_exists=True))
