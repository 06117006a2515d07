"""inotify on the directories a manifest scan walked: a hint for the
directory source's poller, never its source of truth.

Three things come from it: that something changed (the poller wakes now
rather than at its next interval); which files a writer has finished with
(closed after writing, or renamed into place): those are complete, so the
poller reads them at once instead of waiting for them to hold still for
one poll; and which were written to and not closed since: still being
written, so they must hold still for longer. A file seen changing without
such an event waits as before.

Whatever inotify cannot do costs the speed-up only, never a change: a
directory whose watch cannot be added (the per-user watch limit, a
filesystem without inotify, more than MAX_WATCHES directories), a queue
overflow, a missed event. The poll at every interval sees all changes as
before. Linux only (inotify_init1 through libc).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
# Everything that can change what a scan finds under a directory.
MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
# A writer is done with these: the file named is complete.
FINISHED = IN_CLOSE_WRITE | IN_MOVED_TO
MAX_WATCHES = 4096  # directories watched at most; the rest are polled only
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
_READ_BYTES = 64 * 1024


class DirectoryWatch:
    """Watches on a set of directories (watch), and what happened in them
    (wait, finished, writing)."""

    def __init__(self) -> None:
        self._libc: ctypes.CDLL | None = None
        self.fd = -1
        self._wd_of: dict[Path, int] = {}
        self._path_of: dict[int, Path] = {}
        self._finished: set[Path] = set()
        # Files written to (IN_MODIFY) since their writer last closed them:
        # a writer may pause between writes for longer than a poll.
        self._writing: set[Path] = set()
        self.overflows = 0
        self.refused = 0  # watches the kernel would not add (limits, filesystems)
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError) as e:
            log.info("directory source: no inotify (%s): polling only", e)
            return
        if fd < 0:
            log.info("directory source: no inotify (%s): polling only", os.strerror(ctypes.get_errno()))
            return
        self._libc, self.fd = libc, fd
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # interrupt() ends a wait

    @property
    def active(self) -> bool:
        return self.fd >= 0

    def interrupt(self) -> None:
        """End a wait under way (and the next one) at once: stopping."""
        if self.fd >= 0:
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass  # already woken

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self.fd = -1
        self._wd_of.clear()
        self._path_of.clear()
        self._writing.clear()

    def watch(self, directories: Iterable[Path]) -> None:
        """Watch exactly these directories (the ones the last scan listed):
        new ones added, gone ones dropped."""
        if self._libc is None:
            return
        wanted = list(dict.fromkeys(directories))[:MAX_WATCHES]
        keep = set(wanted)
        for path in [p for p in self._wd_of if p not in keep]:
            wd = self._wd_of.pop(path)
            self._path_of.pop(wd, None)
            self._libc.inotify_rm_watch(self.fd, wd)  # fails harmlessly if the kernel dropped it already
        for path in wanted:
            if path in self._wd_of:
                continue
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), MASK)
            if wd < 0:
                self.refused += 1
                continue
            # The same directory reached by two paths has one wd: keep the
            # first path's name for it, as the scan does.
            if wd in self._path_of:
                continue
            self._wd_of[path] = wd
            self._path_of[wd] = path

    def wait(self, timeout: float) -> bool:
        """Wait up to timeout seconds for an event; whether one came."""
        if self.fd < 0:
            return False
        try:
            ready, _, _ = select.select([self.fd, self._wake_r], [], [], max(timeout, 0.0))
        except InterruptedError:
            return False
        return self.fd in ready

    def writing(self) -> set[Path]:
        """Files written to since their writer's last close, as of the last
        finished() call: open for writing, most likely."""
        return set(self._writing)

    def finished(self) -> set[Path]:
        """Read what came; the files writers finished with since the last
        call (as the watched directory's path / name)."""
        while self.fd >= 0:
            try:
                data = os.read(self.fd, _READ_BYTES)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if not data:
                break
            self._parse(data)
        out, self._finished = self._finished, set()
        return out

    def _parse(self, data: bytes) -> None:
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size: offset + _EVENT.size + length].split(b"\0", 1)[0]
            offset += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                self.overflows += 1  # events lost: the poll finds the changes, at its pace
                continue
            if mask & IN_IGNORED:  # the watch is gone (its directory removed)
                path = self._path_of.pop(wd, None)
                if path is not None:
                    self._wd_of.pop(path, None)
                continue
            directory = self._path_of.get(wd)
            if directory is None or not name:
                continue
            path = directory / os.fsdecode(name)
            if mask & FINISHED:
                self._finished.add(path)
                self._writing.discard(path)
            elif mask & IN_MODIFY:
                self._writing.add(path)
            elif mask & (IN_DELETE | IN_MOVED_FROM):
                self._writing.discard(path)
