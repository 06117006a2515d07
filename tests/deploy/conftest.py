"""Helpers for tests/deploy: the files under deploy/, and the Debian tools
the checks run (shellcheck, vagrant). scripts/setup.sh installs those tools;
when one is missing anyway, it is installed here with apt-get (the suite runs
as root), and a tool that still cannot be had fails the test: no silent skip."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VAGRANT_SCRIPTS = DEPLOY / "vagrant"
CRDS = DEPLOY / "crds"  # upstream's CRDs, vendored for the Vagrant lab: not the enforcer's manifests


def require_tool(binary: str, *packages: str) -> str:
    """Path of `binary`, installing the Debian `packages` first if it is missing."""
    found = shutil.which(binary)
    if found:
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    proc = subprocess.run(install, env=env, capture_output=True, text=True)
    if proc.returncode != 0:  # perhaps stale package lists
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        proc = subprocess.run(install, env=env, capture_output=True, text=True)
    found = shutil.which(binary)
    if not found:
        pytest.fail(f"{binary} is needed and could not be installed ({' '.join(packages)}): "
                    f"{proc.stderr.strip()[-2000:]}")
    return found


def require_package(package: str) -> None:
    """Install the Debian package if it is not installed; fail if that fails."""
    def installed() -> bool:
        q = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
        return "install ok installed" in q.stdout
    if installed():
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
    proc = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
                          env=env, capture_output=True, text=True)
    if not installed():
        pytest.fail(f"Debian package {package} is needed and could not be installed: {proc.stderr.strip()[-2000:]}")


@pytest.fixture(scope="session")
def shellcheck() -> str:
    return require_tool("shellcheck", "shellcheck")


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def deploy_yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
                  and CRDS not in p.parents)
