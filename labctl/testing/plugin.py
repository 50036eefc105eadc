"""pytest plugin: real labs as fixtures, for packet-level tests of Kubernetes networking.

Registered under the `pytest11` entry point, so installing labctl makes it available
(README: "Write your own packet tests"; examples/test_my_lab.py):

    pytestmark = pytest.mark.lab("topologies/quickstart")   # one lab for the module

    def test_web_answers(lab):
        assert lab.http_get("client", "web").pod in {e.pod for e in lab.endpoints("web")}

Fixtures: `lab` (module scope) — the topology of the module's `lab` marker, else of the
`lab_file` fixture (override or parametrise it); named by the marker's `name=`, else
the `lab_name` fixture; the marker's `modes=[...]` runs the module once per kube-proxy
mode, each in its own lab `<name>-<mode[:3]>`. A test function (or class) with its own
`lab` marker gets its own lab, named by its `name=` or `pt-<test name>`, up for its
tests only. `session_lab` (session scope) — from
`--labctl-lab PATH` or the `session_lab_file` fixture. Both yield a
`labctl.testing.lab.Lab` and take the lab down afterwards — after failures, a half-made
lab, Ctrl-C — unless `--labctl-keep` asks to leave it up for debugging.

Importing this module stays cheap (pytest loads it into every session): labctl's
library and scapy are imported only when a fixture runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from labctl.testing.lab import Lab

KEPT = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("labctl", "labctl labs (pytest plugin of labctl)")
    group.addoption("--labctl-keep", action="store_true", default=False,
                    help="leave the labs the `lab` fixtures brought up running after the "
                         "tests (to debug them; take them down with `labctl down NAME`)")
    group.addoption("--labctl-lab", metavar="PATH", default=None,
                    help="topology (file or folder) for `session_lab` and for modules "
                         "without a `lab` marker")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "lab(path, name=None, modes=None): the topology (file or folder; relative "
        "to the test file, else to the rootdir) the module's `lab` fixture brings up, its lab "
        "name, and the kube-proxy modes to run the module's tests in (one lab each)")
    config.stash[KEPT] = []


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    kept = config.stash.get(KEPT, [])
    if kept:
        terminalreporter.write_line(
            f"labctl: left up (--labctl-keep): {', '.join(kept)}; take down with "
            + "; ".join(f"`labctl down {k}`" for k in kept))


def _resolve(path: str, request: pytest.FixtureRequest) -> Path:
    """A marker's or option's path: absolute, or next to the test file, or from the
    rootdir."""
    given = Path(path)
    tried = [given] if given.is_absolute() else [
        Path(str(request.node.path)).parent / given if hasattr(request.node, "path") else given,
        request.config.rootpath / given]
    for candidate in tried:
        if candidate.exists():
            return candidate
    pytest.fail(f"labctl: topology {path!r} not found (looked at "
                f"{', '.join(str(t) for t in tried)})", pytrace=False)


def default_name(stem: str, prefix: str = "pt") -> str:
    """A lab name from a module's name: `test_my_lab.py` → `pt-test-my-lab`."""
    text = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")
    return f"{prefix}-{text}"[:40].rstrip("-")


class OwnLab:
    """The lab of a test function or class with its own `lab` marker (a `lab` param)."""

    def __init__(self, path: str, name: str, mode: str | None) -> None:
        self.path, self.name, self.mode = path, name, mode

    def __repr__(self) -> str:
        return f"{self.name}{'-' + self.mode if self.mode else ''}"


def _own_marker(metafunc: pytest.Metafunc) -> pytest.Mark | None:
    """A `lab` marker on the test function or its class, not on the module."""
    node = metafunc.definition
    own = next((m for m in node.iter_markers("lab")), None)
    module_marks = [m for m in getattr(metafunc.module, "pytestmark", [])
                    if getattr(m, "name", "") == "lab"] \
        if isinstance(getattr(metafunc.module, "pytestmark", None), list) else \
        [m for m in [getattr(metafunc.module, "pytestmark", None)]
         if getattr(m, "name", "") == "lab"]
    if own is None or any(own.args == m.args and own.kwargs == m.kwargs
                          for m in module_marks):
        return None
    return own


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`pytest.mark.lab(PATH, modes=[...])`: the module's tests once per proxy mode; a
    test (or class) with a marker of its own, in a lab of its own."""
    if "lab" not in metafunc.fixturenames:
        return
    own = _own_marker(metafunc)
    marker = own or metafunc.definition.get_closest_marker("lab")
    modes = list(marker.kwargs.get("modes") or []) if marker else []
    if own is not None:
        if not own.args:
            pytest.fail(f"labctl: {metafunc.definition.nodeid}: its lab marker names no "
                        "topology: pytest.mark.lab('path/to/lab.yaml')", pytrace=False)
        name = str(own.kwargs.get("name") or default_name(metafunc.definition.name))
        params = [OwnLab(str(own.args[0]), name, mode) for mode in modes or [None]]
        metafunc.parametrize("lab", params, indirect=True, scope="function",
                             ids=[repr(p) for p in params])
    elif modes:
        metafunc.parametrize("lab", modes, indirect=True, scope="module")


def _bring_up(request: pytest.FixtureRequest, path: Path, name: str,
              mode: str | None = None) -> Iterator[Lab]:
    from labctl.testing.lab import LabSetupError, running

    keep = bool(request.config.getoption("labctl_keep"))
    if mode:
        name = f"{name[:36]}-{mode[:3]}"
    failed = ""
    try:
        with running([path], name, keep, mode) as lab:
            yield lab
    except LabSetupError as exc:
        failed = str(exc)
    if failed:  # outside the handler: the report shows labctl's message once
        pytest.fail(f"labctl: lab {name!r} from {path} did not come up:\n{failed}",
                    pytrace=False)
    if keep:
        request.config.stash[KEPT].append(name)


@pytest.fixture(scope="module")
def lab_file(request: pytest.FixtureRequest) -> Path | None:
    """The module's topology: its `lab` marker's path, else `--labctl-lab` (None: not
    named; only tests with a marker of their own may then use `lab`). Override (or
    parametrise) this fixture to choose it another way."""
    marker = request.node.get_closest_marker("lab")
    path = marker.args[0] if marker and marker.args else request.config.getoption("labctl_lab")
    return _resolve(str(path), request) if path else None


@pytest.fixture(scope="module")
def lab_name(request: pytest.FixtureRequest) -> str:
    """The module's lab name: its `lab` marker's `name=`, else `pt-<module name>`."""
    marker = request.node.get_closest_marker("lab")
    if marker and marker.kwargs.get("name"):
        return str(marker.kwargs["name"])
    return default_name(Path(str(request.node.path)).stem)


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest, lab_file: Path | None, lab_name: str
        ) -> Iterator[Lab]:
    """The module's lab, up for the module's tests and always taken down after them (a
    test with its own `lab` marker: its own lab, for it alone)."""
    param = getattr(request, "param", None)  # a mode of the marker's `modes`, or OwnLab
    if isinstance(param, OwnLab):
        yield from _bring_up(request, _resolve(param.path, request), param.name, param.mode)
        return
    if lab_file is None:
        pytest.fail(
            f"labctl: {request.node.nodeid} uses the `lab` fixture but names no topology: "
            'add `pytestmark = pytest.mark.lab("path/to/lab.yaml")` to the module (or a '
            "marker to the test), define a `lab_file` fixture, or pass --labctl-lab PATH",
            pytrace=False)
    yield from _bring_up(request, lab_file, lab_name, param)


@pytest.fixture(scope="session")
def session_lab_file(request: pytest.FixtureRequest) -> Path:
    """The session's topology: `--labctl-lab PATH`; override in a conftest.py."""
    path = request.config.getoption("labctl_lab")
    if not path:
        pytest.fail("labctl: `session_lab` needs a topology: pass --labctl-lab PATH or "
                    "define a `session_lab_file` fixture in conftest.py", pytrace=False)
    return _resolve(str(path), request)


@pytest.fixture(scope="session")
def session_lab_name() -> str:
    return "pt-session"


@pytest.fixture(scope="session")
def session_lab(request: pytest.FixtureRequest, session_lab_file: Path,
                session_lab_name: str) -> Iterator[Lab]:
    """One lab for the whole session, always taken down at its end."""
    yield from _bring_up(request, session_lab_file, session_lab_name, None)
