"""Daemon settings and helpers that make the tests quick without changing
what is tested."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from enforcer.lab.loader import LoaderProcess

# The directory source reads a file its writer closed or renamed into
# place in the poll inotify wakes at once (sources/inotify.py); the
# regular poll (0.1 s by default) is only the fallback. The tests' writers
# close or replace their files, so a shorter poll would not shorten a wait
# for a sync, and it costs CPU: at 0.02 s an idle daemon spent 2.2% of a
# core polling, at 0.1 s 0.5%, with several daemons up at once.
FAST_POLL = ("--poll-interval", "0.1")


def start_all(daemons: Iterable[LoaderProcess]) -> None:
    """Start the daemons at once and wait for each (each start compiles the
    datapath: in parallel, a two-node lab pays for one). Any that did start
    is left to its owner's close()."""
    daemons = list(daemons)
    with ThreadPoolExecutor(max_workers=max(1, len(daemons))) as pool:
        for future in [pool.submit(d.start) for d in daemons]:
            future.result()
