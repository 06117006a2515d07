"""Load a benchmark script (bench/ is not a package) as a module, for the
guard tests: registered in sys.modules while in use, because dataclasses
look their module up."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


@contextmanager
def bench_module(script: str) -> Iterator[ModuleType]:
    """bench/<script>.py as module <script>, for the duration."""
    spec = importlib.util.spec_from_file_location(script, BENCH / f"{script}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)
