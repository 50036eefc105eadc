"""`labctl apply` to a running lab: Services, workloads and pods change, traffic follows;
bad files change nothing. And the env-var pitfall it shows.

A Service created after a pod started is in DNS and reachable at once, but absent from
that pod's environment (the kubelet sets Service variables only when a container
starts) — the lesson's point about DNS versus env-var discovery.
"""

from __future__ import annotations

import time
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
        assert "service/late created (dry run)" in dry
        assert dig("late.default.svc.cluster.local") == []  # nothing changed

        out = labctl("apply", "-f", str(later), "--lab", LAB).stdout
        assert "service/late created" in out
        vip = dig("late.default.svc.cluster.local")
        assert len(vip) == 1
        assert http_get(CLIENT, vip[0], 8000).pod.startswith("web-")
        env = env_of_client()
        assert any(v.startswith("WEB_SERVICE_HOST=") for v in env)
        assert not any(v.startswith("LATE_") for v in env)  # the pitfall: not in the env
        assert "service/late created by labctl apply" in labctl("events", "--lab", LAB).stdout

        changed = tmp_path / "changed.yaml"
        changed.write_text(later.read_text().replace("port: 8000", "port: 9000"))
        assert "service/late configured" in labctl(
            "apply", "-f", str(changed), "--lab", LAB).stdout
        assert http_get(CLIENT, vip[0], 9000).pod.startswith("web-")

        assert "service/late deleted" in labctl(
            "apply", "-f", str(base), "--lab", LAB).stdout
        assert dig("late.default.svc.cluster.local") == []
        code, _ = connect_error(CLIENT, vip[0], 9000, timeout=1.0)
        assert code != 0  # nothing answers the old address any more
        assert "no changes" in labctl("apply", "-f", str(base), "--lab", LAB).stdout
    finally:
        labctl("down", LAB)


def pod_names(prefix: str) -> list[str]:
    out = labctl("get", "pods", "--lab", LAB).stdout.splitlines()[1:]
    return sorted(line.split()[0] for line in out
                  if line.startswith(prefix) and "Terminating" not in line)


def rolled_out(prefix: str, count: int, old: set[str], timeout: float = 30.0) -> list[str]:
    """The pods once a Deployment's rollout is over: `count` running, none of `old`."""
    deadline = time.monotonic() + timeout
    while True:
        names = pod_names(prefix)
        if len(names) == count and not set(names) & old:
            return names
        if time.monotonic() > deadline:
            raise AssertionError(f"no rollout to {count} new pods: {names} (old: {old})")
        time.sleep(0.1)


def answers(vip: str, port: int, count: int) -> set[str]:
    return {http_get(CLIENT, vip, port).pod for _ in range(count)}


STS = ("apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n"
       "  replicas: 2\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n"
       "  template:\n    metadata: {labels: {app: db}}\n    spec:\n"
       "      containers: [{name: db, ports: [{containerPort: 5432}]}]\n")
DB_SVC = ("apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n"
          "  clusterIP: None\n  selector: {app: db}\n  ports: [{port: 5432}]\n")


def test_apply_workloads_and_pods_traffic_follows(tmp_path: Path) -> None:
    base = write_lab(tmp_path, LAB, BASE)
    labctl("up", str(base), "-q")
    try:
        vip = dig("web.default.svc.cluster.local")[0]
        before = pod_names("web-")
        assert answers(vip, 80, 12) == set(before)

        more = tmp_path / "more.yaml"  # replicas 2 → 3, plus a StatefulSet and a pod
        more.write_text(base.read_text().replace("replicas: 2", "replicas: 3")
                        + "---\n" + STS + "---\n" + DB_SVC + "---\n" + pod("extra"))
        dry = labctl("apply", "-f", str(more), "--dry-run", "--lab", LAB).stdout
        assert "deployment.apps/web configured (dry run)" in dry
        assert "statefulset.apps/db created (dry run)" in dry
        assert "ip netns add lc.it-apply.pod.default.db-0" in dry
        assert pod_names("web-") == before  # a dry run changes nothing
        out = labctl("apply", "-f", str(more), "--lab", LAB).stdout
        assert "deployment.apps/web configured" in out and "pod/extra created" in out
        three = pod_names("web-")
        assert len(three) == 3 and set(before) < set(three)
        assert answers(vip, 80, 24) == set(three)
        assert sorted(dig("db.default.svc.cluster.local")) == sorted(
            dig("db-0.db.default.svc.cluster.local") + dig("db-1.db.default.svc.cluster.local"))
        assert len(dig("db-1.db.default.svc.cluster.local")) == 1

        new_port = tmp_path / "template.yaml"  # a changed template: new pods, new names
        new_port.write_text(more.read_text().replace("containerPort: 8080",
                                                     "containerPort: 8081"))
        out = labctl("apply", "-f", str(new_port), "--lab", LAB).stdout
        assert "deployment.apps/web rolling out to web-" in out  # one surge pod at a time
        renamed = rolled_out("web-", 3, set(three))
        assert answers(vip, 80, 24) == set(renamed)  # targetPort is named: it follows

        labctl("apply", "-f", str(base), "--lab", LAB)  # back: db, extra and a web go
        rolled_out("web-", 2, set(renamed))
        assert pod_names("db-") == [] and pod_names("extra") == []
        assert dig("db.default.svc.cluster.local") == []
        assert answers(vip, 80, 12) == set(pod_names("web-"))
    finally:
        labctl("down", LAB)


def test_apply_bad_files_change_nothing(tmp_path: Path) -> None:
    base = write_lab(tmp_path, LAB, BASE)
    labctl("up", str(base), "-q")
    try:
        vip = dig("web.default.svc.cluster.local")[0]
        before = pod_names("")
        bad = tmp_path / "bad.yaml"
        bad.write_text(base.read_text().replace("port: 80,", "port: 80800,")
                       .replace("replicas: 2", "replicas: -3"))
        proc = labctl("apply", "-f", str(bad), "--lab", LAB, check=False)
        assert proc.returncode == 2
        assert proc.stderr.count("bad.yaml:") >= 2  # every error, each at its place
        other = tmp_path / "other.yaml"
        other.write_text(base.read_text().replace("nodes: [{name: node1}, {name: node2}]",
                                                   "nodes: [{name: node1}]"))
        proc = labctl("apply", "-f", str(other), "--lab", LAB, check=False)
        assert proc.returncode == 1 and "Lab document changed" in proc.stderr
        assert http_get(CLIENT, vip, 80).pod.startswith("web-")  # the lab is untouched
        assert pod_names("") == before
    finally:
        labctl("down", LAB)


def test_apply_a_changed_pod_spec(tmp_path: Path) -> None:
    """A StatefulSet's new template replaces its pods under their own names, one at a
    time from the highest ordinal, each back and Ready before the next goes; a bare
    pod's spec cannot change (the API server refuses), but its labels can."""
    name = "it-apply-spec"
    solo = ("apiVersion: v1\nkind: Pod\nmetadata: {name: solo, labels: {app: solo}}\n"
            "spec:\n  containers: [{name: c, ports: [{containerPort: 8080}]}]\n")
    files = join(lab(name), STS, DB_SVC, solo, pod("client"))
    path = write_lab(tmp_path, name, files)
    client = f"lc.{name}.pod.default.client"
    labctl("up", str(path), "-q")
    try:
        def ip_of(pod_name: str) -> str:
            out = labctl("get", "pods", "-o", "wide", "--lab", name).stdout
            return next(ln.split()[5] for ln in out.splitlines()
                        if ln.split()[0] == pod_name and "Running" in ln)

        db0 = ip_of("db-0")
        assert http_get(client, db0, 5432).pod == "db-0"
        # the StatefulSet's template: port 5432 → 5433
        changed = tmp_path / "sts.yaml"
        changed.write_text(path.read_text().replace("containerPort: 5432",
                                                    "containerPort: 5433"))
        out = labctl("apply", "-f", str(changed), "--lab", name).stdout
        assert "statefulset.apps/db configured" in out
        assert "pod/db-1 terminating" in out and "pod/db-0" not in out  # db-1 first
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # back under their names, with the new spec
            try:
                if http_get(client, ip_of("db-0"), 5433).pod == "db-0" and \
                        http_get(client, ip_of("db-1"), 5433).pod == "db-1":
                    break
            except (OSError, StopIteration):
                pass
            time.sleep(0.3)
        else:
            raise AssertionError("db-0 and db-1 did not come back on port 5433")
        assert connect_error(client, ip_of("db-0"), 5432)[0] != 0
        events = [ln.split(None, 4)[2:] for ln in labctl(
            "events", "--lab", name).stdout.splitlines()[1:]]
        order = [(reason, obj) for reason, obj, *_ in events
                 if obj in ("pod/default/db-0", "pod/default/db-1")
                 and reason in ("Killing", "Started")]
        assert order[-4:] == [("Killing", "pod/default/db-1"), ("Started", "pod/default/db-1"),
                              ("Killing", "pod/default/db-0"), ("Started", "pod/default/db-0")], \
            (order, labctl("events", "--lab", name).stdout)

        # a bare pod's spec: refused, exit 2, the pod untouched
        respec = tmp_path / "solo.yaml"
        respec.write_text(changed.read_text().replace("containerPort: 8080",
                                                      "containerPort: 8081"))
        refused = labctl("apply", "-f", str(respec), "--lab", name, check=False)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "solo.yaml:" in refused.stderr and "Pod default/solo: spec" in refused.stderr
        assert "a running pod's spec cannot change" in refused.stderr
        assert http_get(client, ip_of("solo"), 8080).pod == "solo"
        # its labels may change: the Service selecting it follows
        relabel = tmp_path / "labels.yaml"
        relabel.write_text(changed.read_text().replace(
            "labels: {app: solo}", "labels: {app: solo, tier: front}") + "---\n"
            + service("front", "front", 80, 8080).replace("app: front", "tier: front"))
        out = labctl("apply", "-f", str(relabel), "--lab", name).stdout
        assert "terminating" not in out
        vip = dig_in(client, "front.default.svc.cluster.local")
        assert http_get(client, vip, 80).pod == "solo"
    finally:
        labctl("down", name)


def test_statefulset_partition_and_on_delete(tmp_path: Path) -> None:
    """updateStrategy: a partition keeps the lower ordinals on the old template; OnDelete
    updates a pod only when it is deleted."""
    name = "it-apply-sts"
    three = STS.replace("replicas: 2", "replicas: 3")
    partitioned = three.replace("  serviceName: db\n", "  serviceName: db\n  updateStrategy: "
                                "{rollingUpdate: {partition: 2}}\n")
    assert partitioned != three
    path = write_lab(tmp_path, name, join(lab(name), partitioned, DB_SVC, pod("client")))
    client = f"lc.{name}.pod.default.client"
    labctl("up", str(path), "-q")

    def port_of(pod_name: str) -> int:
        """The port the pod's server listens on now (5432 old, 5433 new template)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = labctl("get", "pods", "-o", "wide", "--lab", name).stdout
            ip = next((ln.split()[5] for ln in out.splitlines()
                       if ln.split()[0] == pod_name and "Running" in ln), "")
            for port in (5432, 5433):
                if ip and connect_error(client, ip, port, timeout=1.0)[0] == 0:
                    return port
            time.sleep(0.2)
        raise AssertionError(f"{pod_name} answers on neither port")

    try:
        changed = tmp_path / "v2.yaml"
        changed.write_text(path.read_text().replace("containerPort: 5432",
                                                    "containerPort: 5433"))
        out = labctl("apply", "-f", str(changed), "--lab", name).stdout
        assert "pod/db-2 terminating" in out
        assert port_of("db-2") == 5433
        time.sleep(1.5)  # time enough for a (wrong) next step
        assert port_of("db-1") == 5432 and port_of("db-0") == 5432  # below the partition
        # OnDelete: nothing moves until a pod is deleted; that one comes back updated
        on_delete = tmp_path / "v3.yaml"
        on_delete.write_text(changed.read_text().replace(
            "updateStrategy: {rollingUpdate: {partition: 2}}", "updateStrategy: {type: OnDelete}"))
        out = labctl("apply", "-f", str(on_delete), "--lab", name).stdout
        assert "terminating" not in out
        time.sleep(1.5)
        assert port_of("db-1") == 5432
        labctl("delete", "pod", "db-1", "--lab", name)
        assert port_of("db-1") == 5433 and port_of("db-0") == 5432
    finally:
        labctl("down", name)


def dig_in(ns: str, fqdn: str) -> str:
    return netns_exec(ns, ["dig", "+short", "+time=2", fqdn]).stdout.split()[0]
