"""A lab with the datapath running on it: namespaces, the loader attached to
every pod's host-side interface, and the pinned maps open for writing.

close() undoes all of it, step by step even when a step fails: loader,
tc filters, namespaces (with the processes in them), pins.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from enforcer.datapath.attach import TcAttacher
from enforcer.datapath.loader import remove_pins
from enforcer.datapath.maps import DatapathMaps
from enforcer.datapath.source import DatapathConfig
from enforcer.lab.loader import LoaderProcess
from enforcer.lab.netns import entered, netns_path
from enforcer.lab.topology import Lab

from .world import LabWorld

log = logging.getLogger(__name__)


class LabSession:
    def __init__(self, prefix: str, pods: Sequence[str], pin_dir: Path | str,
                 identities: dict[str, int] | None = None) -> None:
        self.pin_dir = Path(pin_dir)
        if not str(self.pin_dir).startswith("/sys/fs/bpf/"):
            raise ValueError(f"pin dir {self.pin_dir} is not under /sys/fs/bpf")
        self.lab = Lab(prefix, pods)
        self.workdir = _workdir(prefix)  # loader log, ready file
        self.identities = identities
        self.loader: LoaderProcess | None = None
        self.maps: DatapathMaps | None = None
        self.world: LabWorld | None = None

    def __enter__(self) -> LabSession:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> LabSession:
        try:
            self.cleanup_stale(self.lab.prefix, self.pin_dir)  # a crashed run's leftovers
            self.lab.up()
            self.loader = LoaderProcess(self.lab.node_netns, self.pin_dir,
                                        [p.host_ifname for p in self.lab.pods.values()],
                                        workdir=self.workdir)
            self.loader.start()
            self.maps = DatapathMaps(self.pin_dir)
            self.world = LabWorld(self.lab, self.maps, self.identities)
            self.world.reset()
        except BaseException:
            self.close()
            raise
        return self

    @staticmethod
    def cleanup_stale(prefix: str, pin_dir: Path | str | None = None) -> None:
        """Remove what a crashed session with this prefix left: namespaces
        and the processes in them, loader files, and pin_dir if given."""
        Lab.cleanup_stale(prefix)
        shutil.rmtree(_workdir(prefix), ignore_errors=True)
        if pin_dir is not None and Path(pin_dir).exists():
            if not str(pin_dir).startswith("/sys/fs/bpf/"):
                raise ValueError(f"pin dir {pin_dir} is not under /sys/fs/bpf")
            shutil.rmtree(pin_dir)

    def attacher(self) -> TcAttacher:
        return TcAttacher(netns=self.lab.node_netns)

    def close(self) -> None:
        errors: list[BaseException] = []

        def step(what: str, fn) -> None:  # type: ignore[no-untyped-def]
            try:
                fn()
            except Exception as e:  # keep going: every later step still runs
                log.error("lab session cleanup: %s failed: %s", what, e)
                errors.append(e)

        if self.maps is not None:
            step("closing maps", self.maps.close)
        if self.loader is not None:
            step("stopping loader", self.loader.close)
        step("detaching programs", self._detach_all)
        step("deleting namespaces", self.lab.down)
        step("removing pins", self._remove_pins)
        self.maps = None
        self.world = None
        if errors:
            raise errors[0]

    def _detach_all(self) -> None:
        if not netns_path(self.lab.node_netns).exists():
            return
        # The netlink socket is made inside the namespace by this thread
        # rather than through TcAttacher(netns=...): pyroute2 forks a child
        # for that, and a child forked during teardown would unwind through
        # our callers if a signal (Ctrl-C, SIGTERM) reached it.
        with entered(self.lab.node_netns):
            attacher = TcAttacher()
            for ifindex in {a.ifindex for a in attacher.attachments()}:
                attacher.detach(ifindex)

    def _remove_pins(self) -> None:
        remove_pins(DatapathConfig(pin_dir=self.pin_dir))
        if self.pin_dir.exists():  # anything remove_pins does not know
            shutil.rmtree(self.pin_dir)


def _workdir(prefix: str) -> Path:
    return Path(tempfile.gettempdir()) / f"enforcer-lab-{prefix}"
