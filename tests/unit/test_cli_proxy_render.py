"""`labctl proxy render` prints exactly the golden payloads (no root, no lab)."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.cli.commands import invoke
from labctl.cli.main import cli

GOLDEN = Path(__file__).parent / "golden" / "proxy"
FLAGS = ["--node-name", "node1", "--node-ip", "172.18.0.2", "--cluster-cidr", "10.244.0.0/16",
         "--service-cidr", "10.96.0.0/12"]


def cases(mode: str) -> list[str]:
    return sorted(p.stem for p in (GOLDEN / mode).glob("*.yaml"))


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_render_prints_the_golden_payload(mode: str) -> None:
    found = cases(mode)
    assert len(found) >= 14, f"the {mode} goldens are missing"
    for case in found:
        result = invoke(cli, ["proxy", "render", "--mode", mode, *FLAGS,
                                          str(GOLDEN / mode / f"{case}.yaml")])
        assert result.exit_code == 0, result.output
        assert result.stdout == (GOLDEN / mode / f"{case}.txt").read_text(), case


def test_render_reports_bad_input_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "svc.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
                   "spec:\n  ports: [{port: 70000}]\n")
    result = invoke(cli, ["proxy", "render", *FLAGS, str(bad)])
    assert result.exit_code == 2
    assert "svc.yaml:5:" in result.stderr and "port" in result.stderr
