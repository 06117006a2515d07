"""The datapath loaded by a short-lived child process, so that bcc, clang
and LLVM (some 300 MB of a daemon's RSS) never enter the long-lived one.

`python -m enforcer.datapath.loadchild` reads a DatapathConfig as JSON on
stdin, does what loader.load_and_pin does (compile with bcc exactly as an
in-process load would: same cflags, layout checks, pin checks and reuse,
removal of earlier layouts' pins; then pin every program and the events
ring buffer beside the maps), prints one JSON line saying what it did and
exits. A failure is printed as {"error": class, "message": ...} and exits 1;
the parent raises the same EnforcerError class. Its stderr is the parent's
(clang's diagnostics, bcc's warnings).

load_pinned() is the parent's half: run the child, then open the pinned
programs (BPF_OBJ_GET) and the ring buffer. It imports nothing of bcc.
When the bytecode cache (bytecode.py) holds the datapath as this config
compiles it, there is no child at all: the parent loads and pins the
cached instructions itself (no compiler involved), in a fraction of the
time; the child only runs to compile.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import errors
from ..errors import BuildError, EnforcerError, PinError
from . import bpfsys
from .source import DatapathConfig

log = logging.getLogger(__name__)

CHILD_MODULE = "enforcer.datapath.loadchild"


@dataclass
class PinnedPrograms:
    """The programs and the events ring buffer, opened from their pins: fds
    this process owns (tc holds its own references to what is attached)."""

    fds: dict[str, int]
    events_fd: int
    reused_pins: list[str] = field(default_factory=list)
    removed_pins: list[str] = field(default_factory=list)
    kernel_hz: int = 0

    def fd(self, name: str) -> int:
        return self.fds[name]

    def cleanup(self) -> None:
        for fd in (*self.fds.values(), self.events_fd):
            if fd >= 0:
                os.close(fd)
        self.fds, self.events_fd = {}, -1


def config_to_json(config: DatapathConfig) -> str:
    return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()})


def config_from_json(text: str) -> DatapathConfig:
    raw: dict[str, Any] = json.loads(text)
    raw["pin_dir"] = Path(raw["pin_dir"])
    return DatapathConfig(**raw)


def _error_class(name: str) -> type[EnforcerError]:
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, EnforcerError) and cls.__init__ is Exception.__init__:
        return cls
    return BuildError  # one that takes more than a message (MapError): its text is kept


def run_child(config: DatapathConfig, python: str = sys.executable, timeout: float = 600.0) -> dict[str, Any]:
    """Run the loader child on config; returns its report (load_and_pin's)."""
    started = time.monotonic()
    try:
        proc = subprocess.run([python, "-m", CHILD_MODULE], input=config_to_json(config), stdout=subprocess.PIPE,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"the loader child did not finish in {timeout:.0f} s") from e
    lines = proc.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        report = {}
    if "error" in report:
        raise _error_class(report["error"])(report["message"])
    if proc.returncode != 0 or "programs" not in report:
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"status {proc.returncode}"
        raise BuildError(f"the loader child exited with {how} (its stderr is in this process's log)")
    report["seconds"] = round(time.monotonic() - started, 3)
    # The largest RSS of any child this process waited for: the loader's, at start-up.
    report["child_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    return report


def load_in_process(config: DatapathConfig) -> dict[str, Any]:
    """load_and_pin from the bytecode cache, in this process (nothing of bcc
    imported); CacheMiss when the cache cannot serve it."""
    from .loader import load_and_pin

    started = time.monotonic()
    report = load_and_pin(config, compile=False)
    report["seconds"] = round(time.monotonic() - started, 3)
    return report


def load_pinned(config: DatapathConfig, python: str = sys.executable) -> PinnedPrograms:
    """Load the datapath (from the bytecode cache in this process, else in a
    compiling child process), then open what was pinned."""
    from .loader import CacheMiss

    config.validate()
    try:
        report = load_in_process(config)
    except CacheMiss:
        report = run_child(config, python)
    pin_dir = Path(report["pin_dir"])
    fds: dict[str, int] = {}
    try:
        for name, pin in report["programs"].items():
            fds[name] = bpfsys.obj_get(str(pin_dir / pin))
        events_fd = bpfsys.obj_get(str(pin_dir / report["events"]))
    except OSError as e:
        for fd in fds.values():
            os.close(fd)
        raise PinError(f"opening the pinned programs in {pin_dir} failed: {e}") from e
    reused, orphans = report["reused_pins"], report["removed_pins"]
    how = (f"from cached bytecode in {report['seconds']:.2f} s" if "child_peak_rss_mb" not in report else
           f"by a child process in {report['seconds']:.1f} s (its peak RSS {report['child_peak_rss_mb']:.0f} MB)")
    log.info("datapath loaded %s: pins in %s (%s)%s", how, pin_dir,
             f"reused {', '.join(reused)}" if reused else "new",
             f"; removed pins of earlier layouts: {', '.join(orphans)}" if orphans else "")
    return PinnedPrograms(fds, events_fd, reused, orphans, int(report["kernel_hz"]))


def main() -> int:
    """The child: config on stdin, one JSON line on stdout."""
    # Whatever bcc or clang print goes to stderr; stdout carries the report only.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s loader child: %(message)s")
    try:
        from .loader import load_and_pin

        report = load_and_pin(config_from_json(sys.stdin.read()))
    except EnforcerError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}), file=out, flush=True)
        return 1
    print(json.dumps(report), file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
