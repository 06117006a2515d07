"""`enforcer datapath run` as a child process in the lab's node namespace.

Entered with `nsenter --net=` rather than `ip netns exec`: the latter
remounts /sys for the namespace, which hides the BPF pins in /sys/fs/bpf.
nsenter execs the command, so the child's pid is the loader's own and a
kill -9 of it is a kill -9 of the loader.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from .netns import netns_path

log = logging.getLogger(__name__)


def remove_pin_dirs(pin_dirs: Iterable[Path]) -> None:
    """Remove the datapath pins under each directory, and the directory."""
    from ..datapath.loader import remove_pins
    from ..datapath.source import DatapathConfig

    for pin_dir in pin_dirs:
        if pin_dir.exists():
            remove_pins(DatapathConfig(pin_dir=pin_dir))
            shutil.rmtree(pin_dir, ignore_errors=True)


class LoaderError(RuntimeError):
    """The loader did not come up."""


class LoaderProcess:
    def __init__(self, netns: str, pin_dir: Path | str, interfaces: Sequence[str],
                 python: str = sys.executable, workdir: Path | None = None) -> None:
        self.netns = netns
        self.pin_dir = Path(pin_dir)
        self.interfaces = list(interfaces)
        self.python = python
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="enforcer-loader-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ready_file = self.workdir / "ready"
        self.log_file = self.workdir / "loader.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        cmd = ["nsenter", f"--net={netns_path(self.netns)}", self.python, "-m", "enforcer",
               "datapath", "run", "--pin-dir", str(self.pin_dir), "--ready-file", str(self.ready_file)]
        for ifname in self.interfaces:
            cmd += ["--attach", ifname]
        return cmd

    def start(self, timeout: float = 90.0) -> LoaderProcess:
        """Start and wait until it has attached (ready file written)."""
        if self.running:
            raise LoaderError("loader already running")
        self.ready_file.unlink(missing_ok=True)
        with open(self.log_file, "ab") as logf:  # appended: one log across restarts
            self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise LoaderError(f"loader exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise LoaderError(f"loader not ready after {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.05)
        log.debug("loader pid %d ready", self.proc.pid)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        """Send sig (default: kill -9) and wait for the exit; returns the
        exit status (None if it had not been started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        return self.proc.returncode

    def stop(self) -> int | None:
        """Graceful stop (SIGTERM): programs stay attached, as for a restart."""
        return self.kill(signal.SIGTERM)

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def close(self) -> None:
        """Kill if still running; remove the ready file, the log and the
        work directory (if nothing else is in it)."""
        self.kill()
        for p in (self.ready_file, self.log_file):
            p.unlink(missing_ok=True)
        try:
            self.workdir.rmdir()
        except OSError:
            pass


class DaemonProcess(LoaderProcess):
    """`enforcer run` in the node namespace, on a manifest directory, with a
    status file to learn which source revision it has applied."""

    def __init__(self, netns: str, pin_dir: Path | str, source_dir: Path | str, node_name: str,
                 python: str = sys.executable, workdir: Path | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        super().__init__(netns, pin_dir, (), python, workdir)
        self.source_dir = Path(source_dir)
        self.node_name = node_name
        self.status_file = self.workdir / "status.json"
        self.log_file = self.workdir / "daemon.log"
        self.socket = self.workdir / "api" / "enforcer.sock"  # its own: labs run side by side
        self.state_dir = self.workdir / "state"  # its own flow history, kept across its restarts
        self.extra_args = list(extra_args)

    def command(self) -> list[str]:
        return ["nsenter", f"--net={netns_path(self.netns)}", self.python, "-m", "enforcer", "run",
                "--source", str(self.source_dir), "--node", self.node_name, "--pin-dir", str(self.pin_dir),
                "--ready-file", str(self.ready_file), "--status-file", str(self.status_file),
                "--socket", str(self.socket), "--state-dir", str(self.state_dir), *self.extra_args]

    def status(self) -> dict:
        try:
            return json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def wait_synced(self, revision: str, timeout: float = 15.0) -> dict:
        """Wait until a pass has applied the given source revision and the
        revocation that follows it (the connections it no longer allows
        cut) is done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            if st.get("source_revision") == revision and not st.get("revocation", {}).get("pending"):
                return st
            if self.proc is not None and self.proc.poll() is not None:
                raise LoaderError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.02)
        raise LoaderError(f"daemon did not apply revision {revision} in {timeout:.0f}s "
                          f"(status {self.status()}):\n{self.log_tail()}")

    def close(self) -> None:
        super().close()
        self.status_file.unlink(missing_ok=True)
        self.socket.unlink(missing_ok=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        try:
            self.socket.parent.rmdir()
        except OSError:
            pass
        try:
            self.workdir.rmdir()
        except OSError:
            pass
