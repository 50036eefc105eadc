"""`labctl apply` of Service changes to a running lab, and the env-var pitfall it shows.

A Service created after a pod started is in DNS and reachable at once, but absent from
that pod's environment (the kubelet sets Service variables only when a container
starts) — the lesson's point about DNS versus env-var discovery.
"""

from __future__ import annotations

from pathlib import Path

from labctl.testing.runner import labctl, netns_exec
from labctl.testing.traffic import connect_error, http_get
from tests.integration.conftest import write_lab
from tests.integration.manifests import deployment, join, lab, pod, service

LAB = "it-apply"
BASE = join(lab(LAB), deployment("web", 2, port_name="http"),
            service("web", "web", 80, "http"), pod("client"))
LATE = "---\n" + service("late", "web", 8000, "http")
CLIENT = f"lc.{LAB}.pod.default.client"


def dig(name: str) -> list[str]:
    return netns_exec(CLIENT, ["dig", "+short", "+time=2", name]).stdout.split()


def env_of_client() -> list[str]:
    return labctl("exec", "client", "--lab", LAB, "--", "env").stdout.splitlines()


def test_apply_services_to_a_running_lab(tmp_path: Path) -> None:
    base = write_lab(tmp_path, LAB, BASE)
    labctl("up", str(base), "-q")
    try:
        later = tmp_path / "later.yaml"
        later.write_text(base.read_text() + LATE)
        dry = labctl("apply", "-f", str(later), "--dry-run", "--lab", LAB).stdout
        assert "service/default/late created (dry run)" in dry
        assert dig("late.default.svc.cluster.local") == []  # nothing changed

        out = labctl("apply", "-f", str(later), "--lab", LAB).stdout
        assert "service/default/late created" in out
        vip = dig("late.default.svc.cluster.local")
        assert len(vip) == 1
        assert http_get(CLIENT, vip[0], 8000).pod.startswith("web-")
        env = env_of_client()
        assert any(v.startswith("WEB_SERVICE_HOST=") for v in env)
        assert not any(v.startswith("LATE_") for v in env)  # the pitfall: not in the env
        assert "ServiceCreated" in labctl("events", "--lab", LAB).stdout

        changed = tmp_path / "changed.yaml"
        changed.write_text(later.read_text().replace("port: 8000", "port: 9000"))
        assert "service/default/late configured" in labctl(
            "apply", "-f", str(changed), "--lab", LAB).stdout
        assert http_get(CLIENT, vip[0], 9000).pod.startswith("web-")

        assert "service/default/late deleted" in labctl(
            "apply", "-f", str(base), "--lab", LAB).stdout
        assert dig("late.default.svc.cluster.local") == []
        code, _ = connect_error(CLIENT, vip[0], 9000, timeout=1.0)
        assert code != 0  # nothing answers the old address any more
        assert "no changes" in labctl("apply", "-f", str(base), "--lab", LAB).stdout
    finally:
        labctl("down", LAB)


def test_apply_refuses_pod_changes_and_bad_files_and_changes_nothing(tmp_path: Path) -> None:
    base = write_lab(tmp_path, LAB, BASE)
    labctl("up", str(base), "-q")
    try:
        vip = dig("web.default.svc.cluster.local")[0]
        more = tmp_path / "more.yaml"
        more.write_text(base.read_text().replace("replicas: 2", "replicas: 3"))
        proc = labctl("apply", "-f", str(more), "--lab", LAB, check=False)
        assert proc.returncode == 1 and "pods would change" in proc.stderr
        bad = tmp_path / "bad.yaml"
        bad.write_text(base.read_text().replace("port: 80,", "port: 80800,"))
        proc = labctl("apply", "-f", str(bad), "--lab", LAB, check=False)
        assert proc.returncode == 2 and "bad.yaml:" in proc.stderr
        assert http_get(CLIENT, vip, 80).pod.startswith("web-")  # the lab is untouched
        pods = labctl("get", "pods", "--lab", LAB).stdout
        assert len(pods.splitlines()) == 1 + 3  # header, 2 web, client
    finally:
        labctl("down", LAB)

