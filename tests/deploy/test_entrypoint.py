"""deploy/entrypoint.sh, run for real against a scratch directory: every
path it touches is moved there through its ENFORCER_* variables, and the
commands that would reach the system (mount, uname, apt-get, apt-cache,
dpkg, dpkg-deb, the enforcer itself) are stubs that log their arguments."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import DEPLOY

KVER = "6.1.0-99-amd64"
ABI = "6.1.0-99"

STUBS = {
    "uname": 'echo "uname $*" >> "$STUB_LOG"; [ "$1" = -r ] && echo "$STUB_KVER"',
    "mount": ('echo "mount $*" >> "$STUB_LOG"\n'
              '[ -n "${STUB_MOUNT_FAILS:-}" ] && { echo "mount: permission denied" >&2; exit 32; }\n'
              'echo "bpf $4 bpf rw,relatime 0 0" >> "$ENFORCER_MOUNTS"'),
    "enforcer": 'printf "%s\\n" "$@" > "$STUB_EXEC"',
    "apt-get": ('echo "apt-get $*" >> "$STUB_LOG"\n'
                'if [ "$1" = download ]; then shift; for p in "$@"; do case $p in -*) ;; *) : > "$p.deb";; esac; done; fi'),
    "apt-cache": ('echo "apt-cache $*" >> "$STUB_LOG"\n'
                  'case $2 in\n'
                  f'  linux-headers-amd64) printf "linux-headers-amd64\\n  Depends: linux-headers-{ABI}-amd64\\n";;\n'
                  f'  linux-headers-{ABI}-amd64) printf "linux-headers-{ABI}-amd64\\n  Depends: linux-headers-{ABI}-common\\n'
                  '  Depends: linux-kbuild-6.1\\n  Depends: linux-compiler-gcc-12-x86\\n";;\n'
                  'esac'),
    "dpkg": 'echo "dpkg $*" >> "$STUB_LOG"; echo amd64',
    # Unpacks a fake package: the arch headers carry the generated config,
    # the common ones kconfig.h (Debian's split, as on a real machine).
    "dpkg-deb": ('echo "dpkg-deb $*" >> "$STUB_LOG"\n'
                 'name=$(basename "$2" .deb)\n'
                 'case $name in\n'
                 '  *-common) mkdir -p "$3/usr/src/$name/include/linux"; : > "$3/usr/src/$name/include/linux/kconfig.h";;\n'
                 '  *) mkdir -p "$3/usr/src/$name/include/generated"; : > "$3/usr/src/$name/include/generated/autoconf.h";;\n'
                 'esac'),
}


@dataclass
class Sandbox:
    root: Path
    env: dict[str, str]

    @property
    def log(self) -> list[str]:
        path = Path(self.env["STUB_LOG"])
        return path.read_text().splitlines() if path.exists() else []

    @property
    def exec_args(self) -> list[str] | None:
        path = Path(self.env["STUB_EXEC"])
        return path.read_text().splitlines() if path.exists() else None

    @property
    def modules(self) -> Path:
        return Path(self.env["ENFORCER_MODULES_DIR"]) / KVER

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(DEPLOY / "entrypoint.sh"), *args], env={**self.env, **env},
                              capture_output=True, text=True, timeout=60)

    def mount_bpffs(self) -> None:
        with open(self.env["ENFORCER_MOUNTS"], "a") as f:
            f.write(f"bpf {self.env['ENFORCER_BPFFS']} bpf rw,relatime 0 0\n")

    def host_debian_headers(self) -> None:
        """A Debian host with headers: absolute links into /usr/src."""
        host = self.root / "host"
        arch = host / f"usr/src/linux-headers-{KVER}"
        common = host / f"usr/src/linux-headers-{ABI}-common"
        (arch / "include/generated").mkdir(parents=True)
        (arch / "include/generated/autoconf.h").touch()
        (common / "include/linux").mkdir(parents=True)
        (common / "include/linux/kconfig.h").touch()
        mods = host / "lib/modules" / KVER
        mods.mkdir(parents=True)
        (mods / "build").symlink_to(f"/usr/src/linux-headers-{KVER}")
        (mods / "source").symlink_to(f"/usr/src/linux-headers-{ABI}-common")


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        stub = bin_dir / name
        stub.write_text(f"#!/bin/sh\n{body}\n")
        stub.chmod(0o755)
    (tmp_path / "host/lib/modules").mkdir(parents=True)
    (tmp_path / "host/usr/src").mkdir(parents=True)
    (tmp_path / "mounts").write_text(f"proc /proc proc rw 0 0\nsysfs {tmp_path}/sys sysfs ro 0 0\n")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "NODE_NAME": "node-1",
        "STUB_LOG": str(tmp_path / "calls.log"),
        "STUB_EXEC": str(tmp_path / "exec.args"),
        "STUB_KVER": KVER,
        "ENFORCER_BPFFS": str(tmp_path / "sys/fs/bpf"),
        "ENFORCER_MOUNTS": str(tmp_path / "mounts"),
        "ENFORCER_HOST_ROOT": str(tmp_path / "host"),
        "ENFORCER_MODULES_DIR": str(tmp_path / "lib/modules"),
        "ENFORCER_SRC_DIR": str(tmp_path / "usr/src"),
        "ENFORCER_HEADERS_CACHE": str(tmp_path / "cache/headers"),
        "ENFORCER_BIN": str(bin_dir / "enforcer"),
    }
    return Sandbox(tmp_path, env)


def test_host_headers_are_linked_and_the_daemon_is_execed(sandbox):
    sandbox.mount_bpffs()
    sandbox.host_debian_headers()
    proc = sandbox.run("--metrics-port=9977")
    assert proc.returncode == 0, proc.stderr
    assert sandbox.exec_args == ["run", "--source", "kubernetes", "--node", "node-1", "--metrics-port=9977"]
    host = sandbox.root / "host"
    assert os.readlink(sandbox.modules / "build") == f"{host}/usr/src/linux-headers-{KVER}"
    assert os.readlink(sandbox.modules / "source") == f"{host}/usr/src/linux-headers-{ABI}-common"
    # bcc's view: build/ and source/ are directories with what it needs.
    assert (sandbox.modules / "source/include/linux/kconfig.h").is_file()
    assert (sandbox.modules / "build/include/generated/autoconf.h").is_file()
    # absolute links inside header trees resolve through the mirrored /usr/src
    assert os.readlink(sandbox.root / f"usr/src/linux-headers-{KVER}") == f"{host}/usr/src/linux-headers-{KVER}"
    assert not [c for c in sandbox.log if c.startswith(("mount", "apt-get", "dpkg"))]
    assert "using the host's kernel headers" in proc.stderr


def test_host_build_directory_without_links(sandbox):
    """Kernels that install a full build tree in /lib/modules/<release>/build."""
    sandbox.mount_bpffs()
    build = sandbox.root / "host/lib/modules" / KVER / "build"
    (build / "include/linux").mkdir(parents=True)
    (build / "include/linux/kconfig.h").touch()
    (build / "include/generated").mkdir(parents=True)
    (build / "include/generated/autoconf.h").touch()
    proc = sandbox.run()
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(sandbox.modules / "build") == str(build)
    assert not (sandbox.modules / "source").exists()
    assert not [c for c in sandbox.log if c.startswith("apt-get")]


def test_fallback_fetches_debian_headers_once(sandbox):
    sandbox.mount_bpffs()
    proc = sandbox.run()
    assert proc.returncode == 0, proc.stderr
    cache = Path(sandbox.env["ENFORCER_HEADERS_CACHE"])
    assert os.readlink(sandbox.modules / "build") == f"{cache}/usr/src/linux-headers-{ABI}-amd64"
    assert os.readlink(sandbox.modules / "source") == f"{cache}/usr/src/linux-headers-{ABI}-common"
    calls = sandbox.log
    assert "apt-get update -qq" in calls
    (download,) = [c for c in calls if c.startswith("apt-get download")]
    # the two header packages only: no kbuild, no compiler
    assert download.split()[-2:] == [f"linux-headers-{ABI}-amd64", f"linux-headers-{ABI}-common"]
    assert not any(c.startswith("apt-get install") for c in calls)
    assert sandbox.exec_args[:5] == ["run", "--source", "kubernetes", "--node", "node-1"]

    # A restarted container (fresh /lib/modules, same cache volume) downloads nothing.
    Path(sandbox.env["STUB_LOG"]).unlink()
    for link in ("build", "source"):
        (sandbox.modules / link).unlink()
    proc = sandbox.run()
    assert proc.returncode == 0, proc.stderr
    assert not [c for c in sandbox.log if c.startswith(("apt-get", "dpkg-deb"))]
    assert (sandbox.modules / "source/include/linux/kconfig.h").is_file()


def test_fallback_failure_is_reported(sandbox):
    sandbox.mount_bpffs()
    (Path(sandbox.env["PATH"].split(":")[0]) / "apt-get").write_text("#!/bin/sh\nexit 100\n")
    proc = sandbox.run()
    assert proc.returncode == 1
    assert "Debian mirror" in proc.stderr
    assert sandbox.exec_args is None


def test_missing_bpffs_that_cannot_be_mounted_stops_the_daemon(sandbox):
    sandbox.host_debian_headers()
    proc = sandbox.run(STUB_MOUNT_FAILS="1")
    assert proc.returncode == 1
    assert "initContainer" in proc.stderr and "CAP_SYS_ADMIN" in proc.stderr
    assert sandbox.exec_args is None


def test_mount_bpffs_mode_mounts_when_absent_and_never_execs(sandbox):
    proc = sandbox.run("mount-bpffs")
    assert proc.returncode == 0, proc.stderr
    assert f"mount -t bpf bpf {sandbox.env['ENFORCER_BPFFS']}" in sandbox.log
    assert sandbox.exec_args is None
    # mounted now: a second run does nothing
    Path(sandbox.env["STUB_LOG"]).unlink()
    assert sandbox.run("mount-bpffs").returncode == 0
    assert not [c for c in sandbox.log if c.startswith("mount")]


def test_bpffs_is_recognised_by_type_not_by_path(sandbox):
    """A tmpfs (or nothing) at /sys/fs/bpf is not a bpffs."""
    with open(sandbox.env["ENFORCER_MOUNTS"], "a") as f:
        f.write(f"tmpfs {sandbox.env['ENFORCER_BPFFS']} tmpfs rw 0 0\n")
    proc = sandbox.run("mount-bpffs", STUB_MOUNT_FAILS="1")
    assert proc.returncode == 1


def test_node_name_is_required(sandbox):
    sandbox.mount_bpffs()
    sandbox.host_debian_headers()
    env = dict(sandbox.env)
    del env["NODE_NAME"]
    proc = subprocess.run(["bash", str(DEPLOY / "entrypoint.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "NODE_NAME" in proc.stderr
    assert sandbox.exec_args is None
