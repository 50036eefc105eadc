"""Integration tests: as root, real namespaces, real packets.

Every lab a test makes is named `it-…`; after each module no namespace marked for such a
lab may remain, and over the whole session the host's own network must stay unchanged.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from labctl.testing import host
from labctl.testing.runner import labctl, leftovers

IS_ROOT = os.geteuid() == 0
HAS_NETNS = os.path.exists("/proc/self/ns/net")
NEEDED_TOOLS = ("ip", "curl", "ping", "nc")

pytestmark = pytest.mark.root


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = [t for t in NEEDED_TOOLS if shutil.which(t) is None]
    reason = None
    if not IS_ROOT:
        reason = "needs root: creates network namespaces, veths and bridges"
    elif not HAS_NETNS:
        reason = "needs network namespace support in the kernel"
    elif missing:
        reason = f"needs {', '.join(missing)} (run scripts/install-deps.sh)"
    if reason:
        for item in items:
            if "integration" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))


def labs_of_tests() -> list[str]:
    from labctl.lab import etcnetns, store
    from labctl.net import inventory

    return sorted({lab for lab in [*store.known_labs(), *inventory.lab_namespaces(),
                                   *etcnetns.owners()] if lab.startswith("it-")})


@pytest.fixture(scope="session", autouse=True)
def host_unchanged() -> Iterator[None]:
    if not IS_ROOT:
        yield
        return
    before = host.snapshot()
    yield
    changes = host.diff(before, host.snapshot())
    assert not changes, "the host's own network changed:\n" + "\n".join(changes)


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """After a module, no lab it made may remain (labs that were there before it — e.g.
    another test session's on the same host — are not this module's business)."""
    before = set(labs_of_tests()) if IS_ROOT else set()
    yield
    if IS_ROOT:
        labs = [lab for lab in labs_of_tests() if lab not in before]
        left = leftovers(labs)
        for lab in labs:  # leave the machine clean for the next module either way
            labctl("down", lab, check=False)
        assert not left, f"labs left objects behind: {left}"


def only_own_labs(*labs: str) -> Iterator[None]:
    """The body of a module's `nothing_left_behind` override for a module that brings up
    only the labs it names: after it, those leave nothing behind (the conftest's check
    would take down every `it-` lab that appeared meanwhile — another session's too)."""
    yield
    left = leftovers(list(labs))
    for lab in labs:
        labctl("down", lab, check=False)
    assert not left, f"labs left objects behind: {left}"


def write_lab(tmp: Path, name: str, body: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(textwrap.dedent(body))
    return path
