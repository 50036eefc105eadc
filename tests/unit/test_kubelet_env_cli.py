"""`labctl env`: golden output from tests/unit/golden/env/lab.yaml (no lab, no root).

Regenerate the goldens with UPDATE_GOLDEN=1 after checking the difference by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labctl.cli.commands import Invocation, invoke
from labctl.cli.env import env

GOLDEN = Path(__file__).parent / "golden" / "env"
LAB = str(GOLDEN / "lab.yaml")


def run(*args: str) -> Invocation:
    return invoke(env, ["-f", LAB, *args])


@pytest.mark.parametrize(("args", "golden"), [
    (("-n", "shop", "client"), "client.txt"),
    (("-n", "shop", "db-1", "-c", "postgres"), "db-1.txt"),
])
def test_golden(args: tuple[str, ...], golden: str) -> None:
    result = run(*args)
    assert result.exit_code == 0, result.output
    path = GOLDEN / golden
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(result.stdout)
    assert result.stdout == path.read_text()


def test_client_output_follows_the_kubelet_rules() -> None:
    result = run("-n", "shop", "client")
    lines = result.stdout.splitlines()
    env_ = dict(line.split("=", 1) for line in lines)
    # the container's own entries first, in declaration order, then the Service variables
    assert lines[0].startswith("BACKEND_URL=") and lines[10].startswith("GREETING=")
    assert env_["BACKEND_URL"] == "http://10.96.40.2:80/"  # clusterIP as written
    assert env_["LITERAL"] == "$(WEB_FRONTEND_SERVICE_HOST) stays literal"
    assert env_["UNRESOLVED"] == "$(NO_SUCH_VAR)"
    assert env_["METRICS_PORT"] == "overridden by the container"
    assert [k for k in env_ if k == "METRICS_PORT"] == ["METRICS_PORT"]
    assert env_["CACHE_SERVICE_HOST"].startswith("10.")  # allocated: none written
    assert env_["POD_NAMESPACE"] == "shop" and env_["TIER"] == "edge"
    # headless, ExternalName and other namespaces' Services inject nothing
    assert not any(k.startswith(("DB_", "PAYMENTS_", "ADMIN_")) for k in env_)
    assert env_["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert "API_KEY" not in env_
    assert "secretKeyRef" in result.stderr and 'Defaulted container "shell"' in result.stderr


def test_enable_service_links_false_leaves_only_kubernetes() -> None:
    result = run("-n", "shop", "db-1")
    names = [line.split("=", 1)[0] for line in result.stdout.splitlines()]
    assert names[0] == "PGHOST"
    assert all(n.startswith("KUBERNETES_") for n in names[1:]) and len(names) == 9


def test_workload_forms_pick_the_first_pod() -> None:
    result = run("-n", "shop", "statefulset/db")
    assert result.exit_code == 0 and "db-0" in result.stderr
    result = run("-n", "shop", "deploy/web")
    assert result.exit_code == 0 and "WEB_FRONTEND_SERVICE_HOST=10.96.40.2" in result.stdout
    assert run("shop/client", "-c", "sidecar").exit_code == 0


def test_a_missing_pod_exits_1_with_did_you_mean() -> None:
    result = run("-n", "shop", "clinet")
    assert result.exit_code == 1
    assert 'pods "clinet" not found in namespace shop; did you mean client?' in result.stderr
    result = run("client")
    assert result.exit_code == 1 and "use -n shop" in result.stderr
    result = run("-n", "shop", "web")
    assert result.exit_code == 1 and "web is a workload, its pods are: web-" in result.stderr
    result = run("-n", "shop", "deployment/nope")
    assert result.exit_code == 1 and 'Deployment "nope" has no pods' in result.stderr


def test_a_missing_container_exits_1() -> None:
    result = run("-n", "shop", "client", "-c", "nope")
    assert result.exit_code == 1 and "containers: shell, sidecar" in result.stderr


def test_bad_files_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((GOLDEN / "lab.yaml").read_text().replace("port: 6379", "port: 70000"))
    result = invoke(env, ["-f", str(bad), "-n", "shop", "client"])
    assert result.exit_code == 2 and "70000" in result.stderr
    result = invoke(env, ["-f", str(tmp_path / "missing.yaml"), "client"])
    assert result.exit_code == 2
