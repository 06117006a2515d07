"""Network namespace plumbing for the lab: `ip` commands, sysctls, and
entering a namespace from this process.

Two ways into a namespace, for two needs:
- `ip netns exec` for long-lived helpers (servers). It also remounts /sys
  for the namespace, which hides /sys/fs/bpf: anything that needs BPF pins
  goes through `nsenter --net=...` instead (see loader.py).
- `entered(netns)` switches only the calling thread (setns(2)) and back. A
  socket belongs to the namespace it was created in, so a socket made there
  stays a socket of the pod after the thread has left: probes and long-lived
  test connections need no helper process.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


class LabCommandError(RuntimeError):
    """An `ip`/`sysctl` command the lab ran failed."""


def run(cmd: Sequence[str], *, input: str | None = None, check: bool = True) -> str:
    """Run cmd, return its stdout; raise LabCommandError with stderr on failure."""
    log.debug("lab: %s", " ".join(cmd))
    proc = subprocess.run(list(cmd), input=input, capture_output=True, text=True)
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise LabCommandError(f"{' '.join(cmd)}: exit {proc.returncode}: {detail}")
    return proc.stdout


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    return run([*prefix, *args], check=check)


def ip_batch(lines: Sequence[str], netns: str | None = None) -> None:
    """Several `ip` commands in one process (stops at the first failure)."""
    if not lines:
        return
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    run([*prefix, "-batch", "-"], input="\n".join(lines) + "\n")


def ip_json(*args: str, netns: str | None = None) -> list[dict[str, Any]]:
    out = ip("-j", *args, netns=netns)
    return json.loads(out) if out.strip() else []


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def netns_list() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def netns_add(name: str) -> None:
    ip("netns", "add", name)


def netns_pids(name: str) -> list[int]:
    out = ip("netns", "pids", name, check=False)
    return [int(tok) for tok in out.split() if tok.isdigit()]


def kill_pids(pids: Sequence[int], timeout: float = 3.0) -> None:
    """SIGKILL each pid (processes the lab started) and wait until gone."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            try:  # reap it if it is our child
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            except ChildProcessError:
                pass
            time.sleep(0.02)


def netns_delete(name: str) -> bool:
    """Kill what still runs in the namespace, then delete it. Idempotent:
    returns False when there was nothing to delete."""
    if not netns_path(name).exists():
        return False
    kill_pids(netns_pids(name))
    ip("netns", "delete", name, check=False)
    return True


def sysctl(netns: str, settings: dict[str, str | int]) -> None:
    """Write net sysctls inside a namespace (one process for all of them)."""
    if settings:
        run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w",
             *(f"{k}={v}" for k, v in settings.items())])


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def entered(netns: str | None) -> Iterator[None]:
    """Run the body with the calling thread in netns (None: stay put)."""
    if netns is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns_path(netns), os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)  # if this fails the thread is lost: let it raise
    finally:
        os.close(own)
