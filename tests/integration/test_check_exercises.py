"""`labctl check` against real labs: every exercise's checks pass on its solved lab and
fail once its broken.yaml is applied; the JSON report's schema; a bad check file exits 2
and runs nothing.

Exercises are found anew at every run (every topologies/*/checks.yaml), so new ones are
tested as they are added. Each runs as a copy whose Lab is renamed ck<NN> (ckqs for
quickstart): exercise authors may have their own ex<NN> up on this host.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labctl.errors import CapabilityError
from labctl.testing.runner import labctl, leftovers

ROOT = Path(__file__).resolve().parents[2]
EXERCISES = sorted(p.parent for p in (ROOT / "topologies").glob("*/checks.yaml"))
SETTLE = 30.0  # seconds for readiness probes and the agent to reach the expected state


def lab_name(folder: Path) -> str:
    number = folder.name.split("-", 1)[0]
    return f"ck{number}" if number.isdigit() else "ckqs"


def renamed_copy(folder: Path, tmp: Path, new: str) -> Path:
    """The exercise folder copied under `tmp` (same folder name) with its Lab document's
    metadata.name set to `new` in lab.yaml and broken.yaml (checks.yaml is kept: the
    test passes --lab)."""
    copy = tmp / folder.name
    shutil.copytree(folder, copy)
    for name in ("lab.yaml", "broken.yaml"):
        path = copy / name
        if path.exists():
            path.write_text(rename_lab(path.read_text(), new))
    return copy


def rename_lab(text: str, new: str) -> str:
    docs = re.split(r"(?m)^(?=---\s*$)", text)
    for i, doc in enumerate(docs):
        if re.search(r"(?m)^kind:\s*Lab\s*$", doc):
            docs[i], n = re.subn(r"(?m)(^metadata:\s*\n\s+name:\s*|^metadata:\s*\{\s*name:\s*)"
                                 r"[A-Za-z0-9-]+", rf"\g<1>{new}", doc, count=1)
            assert n == 1, f"no metadata.name in the Lab document:\n{doc}"
            return "".join(docs)
    raise AssertionError("no kind: Lab document")


def skip_without_ipvs(lab_file: Path) -> None:
    from labctl.cluster.compile import compile_files
    from labctl.proxy import sync

    state, _ = compile_files([str(lab_file)])
    if state.lab.proxy_mode != "ipvs":
        return
    try:
        sync.check_ipvs(state)
    except CapabilityError as exc:
        pytest.skip(f"proxyMode ipvs and this host lacks IPVS ({exc}); "
                    "run it in the VM: make test-vm")


def check_until(args: list[str], rc: int, seconds: float = SETTLE
                ) -> tuple[int, str, str]:
    """Run `labctl check` until it exits `rc` (pods become ready, apply converges) or
    time runs out; the last run's (exit code, stdout, stderr)."""
    deadline = time.monotonic() + seconds
    while True:
        proc = labctl("check", *args, check=False, timeout=60)
        if proc.returncode == rc or time.monotonic() > deadline:
            return proc.returncode, proc.stdout, proc.stderr
        time.sleep(1.0)


def settled(lab: str, seconds: float = SETTLE) -> None:
    """Wait until no pod of the lab is terminating or being created."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rows = labctl("get", "pods", "-A", "--lab", lab).stdout.splitlines()[1:]
        if not any(w in row for row in rows for w in ("Terminating", "ContainerCreating")):
            return
        time.sleep(0.5)


def ck_labs() -> set[str]:
    from labctl.lab import store
    from labctl.net import inventory

    return {lab for lab in [*store.known_labs(), *inventory.lab_namespaces()]
            if lab.startswith("ck")}


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """Replaces conftest's check of it-* labs for this module: its labs are ck-*, and
    it-* labs appearing meanwhile belong to other test sessions on this host."""
    before = ck_labs()
    yield
    made = sorted(ck_labs() - before)
    left = leftovers(made)
    for lab in made:
        labctl("down", lab, check=False)
    assert not left, f"labs left objects behind: {left}"


@pytest.fixture
def lab_down() -> Iterator[list[str]]:
    """Labs the test brings up; always taken down, and nothing of them may remain."""
    labs: list[str] = []
    yield labs
    for lab in labs:
        labctl("down", lab, check=False)
    assert not leftovers(labs)


@pytest.mark.parametrize("folder", EXERCISES, ids=[f.name for f in EXERCISES])
def test_exercise_passes_solved_and_fails_broken(folder: Path, tmp_path: Path,
                                                 lab_down: list[str]) -> None:
    assert (folder / "broken.yaml").exists(), f"{folder.name} has no broken.yaml"
    lab = lab_name(folder)
    copy = renamed_copy(folder, tmp_path, lab)
    skip_without_ipvs(copy / "lab.yaml")
    labctl("down", lab, check=False)  # a leftover of an interrupted run
    lab_down.append(lab)
    labctl("up", str(copy / "lab.yaml"), "-q")

    rc, out, err = check_until([str(copy), "--lab", lab], 0)
    assert rc == 0, f"the solved {folder.name} fails its checks:\n{out}{err}"
    assert "FAIL" not in out

    labctl("apply", "-f", str(copy / "broken.yaml"), "--lab", lab)
    settled(lab)  # replaced pods gone and their successors started: a stable broken state
    rc, out, err = check_until([str(copy), "--lab", lab], 1)
    assert rc == 1, f"{folder.name}'s broken.yaml breaks no check:\n{out}{err}"
    failed = [line.split("FAIL", 1)[1].strip() for line in out.splitlines()
              if line.startswith("  FAIL  ")]
    assert failed, out + err
    proc = labctl("check", str(copy), "--lab", lab, "-o", "json", check=False)
    assert proc.returncode == 1 and proc.stdout.startswith("{"), proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    titles = [c["title"] for t in report["tasks"] for c in t["checks"] if not c["passed"]]
    assert report["passed"] is False and set(titles) & set(failed), (titles, failed)


# ---------------------------------------------------------------- quickstart copy


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A copy of quickstart up as lab ckjs, its checks.yaml naming ckjs too."""
    lab = "ckjs"
    copy = renamed_copy(ROOT / "topologies" / "quickstart",
                        tmp_path_factory.mktemp("exercises"), lab)
    checks = copy / "checks.yaml"
    checks.write_text(checks.read_text().replace("lab: quickstart", f"lab: {lab}"))
    labctl("down", lab, check=False)
    labctl("up", str(copy / "lab.yaml"), "-q")
    try:
        check_until([str(copy)], 0)
        yield lab, copy
    finally:
        labctl("down", lab, check=False)
        assert not leftovers([lab])


def test_json_report_schema(quickstart: tuple[str, Path]) -> None:
    lab, copy = quickstart
    proc = labctl("check", str(copy), "-o", "json", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["schema"] == "labctl.check/v1"
    assert (report["exercise"], report["lab"], report["passed"]) == ("quickstart", lab, True)
    assert report["file"].endswith("quickstart/checks.yaml")
    assert isinstance(report["seconds"], float)
    checks = [c for t in report["tasks"] for c in t["checks"]]
    assert report["counts"] == {"checks": len(checks), "passed": len(checks), "failed": 0}
    assert [t["task"] for t in report["tasks"]] == [1, 2, 3, 4, 5]
    for task in report["tasks"]:
        assert set(task) == {"task", "title", "passed", "checks"}
    kinds = set()
    for c in checks:
        kinds.add(c["kind"])
        base = {"kind", "title", "source", "passed", "expected", "observed", "detail"}
        assert set(c) == base | ({"cells"} if c["kind"] == "reach" else set()), c
        assert re.fullmatch(r".*checks\.yaml:\d+:\d+", c["source"])
        assert all(isinstance(c[k], str) for k in ("expected", "observed", "detail"))
    assert kinds == {"reach", "dns", "rule", "endpoints", "command"}
    spread = next(c for c in checks if c["kind"] == "reach" and "count" not in c["title"]
                  and c["cells"][0]["to"] == "web" and len(c["cells"][0]["answeredBy"]) == 30)
    cell = spread["cells"][0]
    assert set(cell) == {"from", "to", "address", "expected", "observed", "passed",
                         "answeredBy", "detail"}
    assert len(set(cell["answeredBy"])) == 3 and cell["observed"] == "ok ×30"
    matrix = next(c for c in checks if c["kind"] == "reach" and len(c["cells"]) == 6)
    assert {(x["from"], x["to"]) for x in matrix["cells"]} == {
        (a, b) for a in ("client", "node:node2")
        for b in ("web", "nginx-service", "web.default.svc.cluster.local")}


def test_check_finds_the_exercise_of_the_running_lab(quickstart: tuple[str, Path]) -> None:
    lab, copy = quickstart
    env = {**os.environ, "LABCTL_TOPOLOGIES": str(copy.parent)}
    import subprocess

    from labctl.testing.runner import labctl_argv

    proc = subprocess.run(labctl_argv("check"), env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"exercise quickstart on lab {lab}")
    listed = subprocess.run(labctl_argv("check", "--list"), env=env, capture_output=True,
                            text=True, timeout=60, check=True).stdout
    assert re.search(r"(?m)^quickstart\s+yes\s", listed)


def test_a_failing_check_says_what_it_expected_and_saw(quickstart: tuple[str, Path],
                                                       tmp_path: Path) -> None:
    lab, _copy = quickstart
    folder = tmp_path / "wrong"
    folder.mkdir()
    (folder / "checks.yaml").write_text(f"""\
exercise: wrong
lab: {lab}
tasks:
  - task: 1
    title: wrong on purpose
    checks:
      - reach: {{from: [client, external], to: [web, "web-*"], port: 8080, expect: ok}}
      - dns: {{from: client, name: web.default.svc.cluster.local, expect: [10.0.0.1]}}
      - endpoints: {{service: web, ready: 5}}
      - rule: {{node: node1, pattern: "default/web:http", present: false}}
      - command: {{in: client, run: "echo hello; exit 3", expect: hello, exitCode: 0}}
      - reach: {{from: client, to: gone, port: 80}}
""")
    proc = labctl("check", str(folder), check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    # the ClusterIP listens on 80, not 8080: timeout; the pod itself answers on 8080
    assert re.search(r"client\s+ok/timeout !\s+ok/ok", out), out
    assert "observed: ready 3" in out and "expected: ready 5" in out
    assert "expected: 10.0.0.1" in out
    assert "observed: exit code 3" in out
    assert "no Service or pod named 'gone'" in out
    assert "0/6 checks passed" in out


def test_bad_check_file_exits_2_and_runs_nothing(quickstart: tuple[str, Path],
                                                 tmp_path: Path) -> None:
    from labctl.lab import store
    from labctl.net import inventory

    lab, _copy = quickstart
    marker = tmp_path / "ran"
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "checks.yaml").write_text(f"""\
exercise: bad
lab: {lab}
tasks:
  - task: 1
    title: a command first, an error after it
    checks:
      - command: {{in: "node:node1", run: "touch {marker}"}}
      - reach: {{from: client, to: web, expect: okay}}
""")
    def ours() -> tuple[list[str], list[str]]:
        return ([x for x in store.known_labs() if x.startswith("ck")],
                sorted(x for x in inventory.lab_namespaces() if x.startswith("ck")))

    labs_before = ours()
    proc = labctl("check", str(folder), check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert re.search(r"checks\.yaml:8:\d+: error: tasks\[0\]\.checks\[1\]\.reach\.expect: "
                     r'expected one of ok, refused, timeout, unreachable, found "okay"',
                     proc.stderr), proc.stderr
    assert 'hint: did you mean "ok"?' in proc.stderr
    assert proc.stdout == ""
    assert not marker.exists(), "a check ran although the file was bad"
    # and without any lab up under that name: still 2, nothing created
    proc = labctl("check", str(folder), "--lab", "ck-none", check=False)
    assert proc.returncode == 2
    assert ours() == labs_before
