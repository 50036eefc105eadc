"""The Service behaviour suite (tests/integration/test_services.py) over IPVS mode: the
same tests, collected here with a lab in IPVS mode, so every behaviour the other modes
are held to — and the ones where IPVS differs, per `service_lab.BEHAVIOUR` — is checked
on a kernel with IPVS."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.service_lab import Lab, running_lab
from tests.integration.test_services import *  # noqa: F403 - the shared tests, collected here


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Lab]:
    yield from running_lab(request, tmp_path_factory, "ipvs")
