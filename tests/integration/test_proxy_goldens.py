"""Every iptables golden payload loads into a real node namespace, with both backends.

The goldens of tests/unit/golden/proxy/iptables are what `labctl proxy render` prints
and what a lab loads; here each one goes through the real iptables-restore (nft and
legacy backends) in a throw-away namespace, preceded by the chains and jump rules
kube-proxy ensures, and the kernel must then hold every chain the payload declares.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from labctl.net import netfilter
from labctl.proxy import iptables
from labctl.proxy.sync import with_jump_rules
from tests.unit.test_proxy_iptables import GOLDEN, golden_input

pytestmark = pytest.mark.root

CASES = sorted(p.stem for p in (Path(__file__).parents[1] / "unit" / "golden" / "proxy" /
                                "iptables").glob("*.yaml"))
BACKENDS = ["nft", "legacy"]


@pytest.fixture
def scratch() -> Iterator[str]:
    name = f"it-ipt-gold-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_golden_loads_into_a_node_namespace(case: str, backend: str, scratch: str) -> None:
    tool = netfilter.iptables_binary(backend, "iptables-restore")
    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool} (Debian package iptables)")
    golden = (GOLDEN / f"{case}.txt").read_text()
    rs = iptables.render(golden_input(case))
    assert rs.payload() == golden  # the file is what labctl loads
    netfilter.restore_iptables(scratch, with_jump_rules(golden, rs.ensure_chains(),
                                                        rs.jump_rules()), backend)
    saved = netfilter.iptables_save(scratch, backend)
    declared = set(re.findall(r"^:(\S+) - \[0:0\]$", golden, re.M))
    present = set(re.findall(r"^:(\S+) ", saved, re.M))
    assert declared <= present, declared - present
    rules = [ln for ln in golden.splitlines() if ln.startswith("-A ")]
    assert len([ln for ln in saved.splitlines() if ln.startswith("-A KUBE-")]) >= len(rules)
