"""`labctl rules NODE --service NS/NAME`: the filter keeps one Service's lines only."""

from __future__ import annotations

from labctl.cli.rules_view import _filter_iptables, service_pattern

SAVE = """*nat
-A KUBE-SERVICES -m comment --comment "default/db-any:pg cluster IP" -j KUBE-SVC-A
-A KUBE-SERVICES -m comment --comment "default/db:pg cluster IP" -j KUBE-SVC-B
-A KUBE-SERVICES -m comment --comment "default/db cluster IP" -j KUBE-SVC-C
-A KUBE-SERVICES -m comment --comment "default/db.v2:pg cluster IP" -j KUBE-SVC-D
COMMIT
"""


def test_a_service_name_does_not_match_a_longer_one() -> None:
    got = _filter_iptables(SAVE, set(), service_pattern("default", "db"))
    lines = SAVE.splitlines()
    assert got.splitlines() == ["*nat", lines[2], lines[3], "COMMIT"]


def test_nft_names_match() -> None:
    pattern = service_pattern("default", "db")
    assert pattern.search('comment "default/db/tcp/pg"')
    assert not pattern.search('comment "default/db-any/tcp/pg"')
