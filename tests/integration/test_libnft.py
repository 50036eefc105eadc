"""nftables loads in-process (libnftables): each lands in its own namespace only — never
the host's — atomically, with nft's own error text; several at once through Loads."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from labctl.net import libnft, netfilter, netns

NAMES = ("lc-it-libnft-a", "lc-it-libnft-b", "lc-it-libnft-c")

pytestmark = pytest.mark.skipif(not libnft.available(),
                                reason="needs libnftables (Debian: libnftables1)")


def tables(ns: str | None) -> str:
    argv = ["nft", "list", "tables"]
    return subprocess.run(argv if ns is None else ["ip", "netns", "exec", ns, *argv],
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture
def scratch() -> Iterator[tuple[str, ...]]:
    netns.ensure_run_dir()
    for ns in NAMES:
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        yield NAMES
    finally:
        for ns in NAMES:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def test_a_load_lands_in_its_namespace_only(scratch: tuple[str, ...]) -> None:
    host_before = tables(None)
    assert libnft.run(scratch[0], "add table ip labctl-it\nadd chain ip labctl-it c\n") == ""
    assert "table ip labctl-it" in tables(scratch[0])
    assert "labctl-it" not in tables(scratch[1])
    assert tables(None) == host_before


def test_a_bad_payload_changes_nothing_and_says_why(scratch: tuple[str, ...]) -> None:
    error = libnft.run(scratch[0], "add table ip ok\nadd chain ip ok c { bogus ; }\n")
    assert "Error:" in error and "bogus" in error, error
    assert "table ip ok" not in tables(scratch[0])  # one transaction: all or nothing
    with pytest.raises(netfilter.NetfilterError, match="libnftables in lc-it-libnft-a"):
        netfilter.load_nft(scratch[0], "delete table ip never-made\n")


def test_loads_run_at_once_each_in_its_namespace(scratch: tuple[str, ...]) -> None:
    host_before = tables(None)
    loads = netfilter.Loads()
    for i, ns in enumerate(scratch):
        loads.start(ns, netfilter.NFT_LOAD, f"add table ip node{i}\n")
    done = loads.wait()
    assert [d.tool for d in done] == ["nft"] * 3
    for i, ns in enumerate(scratch):
        assert tables(ns).split() == ["table", "ip", f"node{i}"]
    assert tables(None) == host_before
    failing = netfilter.Loads()
    failing.start(scratch[0], netfilter.NFT_LOAD, "add table ip fine\n")
    failing.start(scratch[1], netfilter.NFT_LOAD, "add chain ip missing c\n")
    with pytest.raises(netfilter.NetfilterError, match="lc-it-libnft-b"):
        failing.wait()
    assert "table ip fine" in tables(scratch[0])  # the other node's load went in
