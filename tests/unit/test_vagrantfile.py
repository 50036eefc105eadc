"""vagrant/Vagrantfile validates offline (scripts/validate-vagrant.sh, as `make test-vagrant`
runs it), and the check fails on a broken copy: a misspelt VM setting and a misspelt
VirtualBox setting."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "validate-vagrant.sh"
VAGRANTFILE = ROOT / "vagrant" / "Vagrantfile"

pytestmark = pytest.mark.skipif(shutil.which("vagrant") is None,
                                reason="vagrant is not installed (scripts/install-deps.sh "
                                       "installs it)")


def validate(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), str(folder)], capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_vagrantfile_validates() -> None:
    done = validate(VAGRANTFILE.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("Vagrantfile validated successfully") == 2


@pytest.mark.parametrize(("setting", "typo"), [("config.vm.hostname", "config.vm.hostnam"),
                                               ("vb.cpus", "vb.cpuz")])
def test_a_misspelt_setting_fails(tmp_path: Path, setting: str, typo: str) -> None:
    text = VAGRANTFILE.read_text()
    assert setting in text
    (tmp_path / "Vagrantfile").write_text(text.replace(setting, typo))
    done = validate(tmp_path)
    assert done.returncode != 0
    assert f"shouldn't exist: {typo.rpartition('.')[2]}" in done.stdout + done.stderr
