"""Daemon settings and helpers that make the tests quick without changing
what is tested."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from enforcer.lab.loader import LoaderProcess

# The directory source reads a changed file once it has held still for one
# poll (0.1 s by default). The tests' writers replace files atomically, so a
# shorter poll only shortens every wait for a sync.
FAST_POLL = ("--poll-interval", "0.02")


def start_all(daemons: Iterable[LoaderProcess]) -> None:
    """Start the daemons at once and wait for each (each start compiles the
    datapath: in parallel, a two-node lab pays for one). Any that did start
    is left to its owner's close()."""
    daemons = list(daemons)
    with ThreadPoolExecutor(max_workers=max(1, len(daemons))) as pool:
        for future in [pool.submit(d.start) for d in daemons]:
            future.result()
