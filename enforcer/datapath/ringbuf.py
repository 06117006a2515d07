"""A reader of a BPF_MAP_TYPE_RINGBUF map by fd, in Python: what libbpf's
ring_buffer__poll does, without bcc (and so without LLVM in the process).

The kernel's layout (kernel/bpf/ringbuf.c) as user space maps it:

- offset 0, one page, read-write: the consumer position (u64), which only
  the reader advances;
- offset one page, read-only: the producer position (u64) on its own page,
  then the data area of max_entries bytes (a power of two), mapped twice
  back to back, so a record that wraps past the end reads as one piece.

A record is an 8-byte header (u32 length with BUSY and DISCARD bits, u32
page offset the kernel uses) and the sample, padded to 8 bytes. The reader
loads the producer position and each header with acquire semantics, stops
at a BUSY record (reserved, not yet submitted), skips DISCARDed ones, and
stores the consumer position with release semantics once the record is
copied out, so the producer never reuses space still being read.

The map fd is pollable: readable while the consumer lags the producer. The
kernel wakes a waiter when a record is submitted at the consumer position
(its default, adaptive notification), so a reader that consumes everything
before waiting again never misses one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import platform
import select
from collections.abc import Callable

from ..errors import DatapathError
from . import bpfsys

log = logging.getLogger(__name__)

BPF_MAP_TYPE_RINGBUF = 27
BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_SIZE = 8

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


class _Plain:
    """Acquire loads and release stores on a strongly ordered CPU (x86:
    TSO): plain aligned loads and stores are both, and CPython's separate C
    calls cannot be reordered by its compiler."""

    @staticmethod
    def load64(addr: int) -> int:
        return int(ctypes.c_uint64.from_address(addr).value)

    @staticmethod
    def load32(addr: int) -> int:
        return int(ctypes.c_uint32.from_address(addr).value)

    @staticmethod
    def store64(addr: int, value: int) -> None:
        ctypes.c_uint64.from_address(addr).value = value


class _Atomic:
    """Elsewhere (arm64, ...): libatomic's __atomic_load_N/__atomic_store_N
    with explicit memory orders."""

    ACQUIRE = 2
    RELEASE = 3

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._load8, self._load4, self._store8 = lib.__atomic_load_8, lib.__atomic_load_4, lib.__atomic_store_8
        self._load8.restype, self._load8.argtypes = ctypes.c_uint64, [ctypes.c_void_p, ctypes.c_int]
        self._load4.restype, self._load4.argtypes = ctypes.c_uint32, [ctypes.c_void_p, ctypes.c_int]
        self._store8.restype = None
        self._store8.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]

    def load64(self, addr: int) -> int:
        return int(self._load8(addr, self.ACQUIRE))

    def load32(self, addr: int) -> int:
        return int(self._load4(addr, self.ACQUIRE))

    def store64(self, addr: int, value: int) -> None:
        self._store8(addr, value, self.RELEASE)


def _memory_order() -> _Plain | _Atomic:
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i486", "i586", "i686"):
        return _Plain()
    name = ctypes.util.find_library("atomic")
    if not name:
        raise DatapathError("reading the events ring buffer on this CPU needs libatomic (acquire/release "
                            "ordering); install libatomic1")
    return _Atomic(ctypes.CDLL(name))


def _mmap(fd: int, length: int, prot: int, offset: int) -> int:
    addr = _libc.mmap(None, length, prot, mmap.MAP_SHARED, fd, offset)
    if addr in (None, _MAP_FAILED):
        err = ctypes.get_errno()
        raise DatapathError(f"mapping the ring buffer failed: {os.strerror(err)}")
    return int(addr)


class RingBuffer:
    """One ring buffer map, consumed in this process. `callback(bytes)` gets
    each submitted record's sample, in order; discarded records are skipped.
    The fd is the caller's (the mappings stay valid if it is closed)."""

    def __init__(self, fd: int, callback: Callable[[bytes], object]) -> None:
        info = bpfsys.map_info(fd)
        if info.type != BPF_MAP_TYPE_RINGBUF:
            raise DatapathError(f"map fd {fd} is of type {info.type}, not a ring buffer")
        size = int(info.max_entries)
        if size <= 0 or size & (size - 1):
            raise DatapathError(f"ring buffer size {size} is not a power of two")
        self.size = size
        self.mask = size - 1
        self.callback = callback
        self._order = _memory_order()
        page = mmap.PAGESIZE
        self._page = page
        self._cons_len, self._prod_len = page, page + 2 * size
        self._cons = _mmap(fd, self._cons_len, mmap.PROT_READ | mmap.PROT_WRITE, 0)
        try:
            self._prod = _mmap(fd, self._prod_len, mmap.PROT_READ, page)
        except DatapathError:
            _libc.munmap(self._cons, self._cons_len)
            raise
        self._data = self._prod + page
        self._epoll: select.epoll | None = select.epoll()
        self._epoll.register(fd, select.EPOLLIN)

    @property
    def consumer_pos(self) -> int:
        return self._order.load64(self._cons)

    @property
    def producer_pos(self) -> int:
        return self._order.load64(self._prod)

    def consume(self) -> int:
        """Hand every record submitted so far to the callback; returns how
        many (discarded ones not counted)."""
        if self._epoll is None:
            raise DatapathError("ring buffer closed")
        order, data, mask = self._order, self._data, self.mask
        cons = order.load64(self._cons)
        count = 0
        while True:
            progressed = False
            prod = order.load64(self._prod)
            while cons < prod:
                at = data + (cons & mask)
                header = order.load32(at)
                if header & BUSY_BIT:
                    break  # reserved, not submitted yet: later records wait for it
                length = header & ~(BUSY_BIT | DISCARD_BIT)
                sample = None if header & DISCARD_BIT else ctypes.string_at(at + HEADER_SIZE, length)
                cons += (length + HEADER_SIZE + 7) & ~7
                order.store64(self._cons, cons)  # the space is the producer's again
                progressed = True
                if sample is not None:
                    count += 1
                    try:
                        self.callback(sample)
                    except Exception:  # noqa: BLE001 - one bad record must not stop the reader
                        log.exception("ring buffer callback failed")
            if not progressed:
                return count

    def poll(self, timeout_ms: int = 100) -> int:
        """Wait up to timeout_ms for records, then consume them."""
        if self._epoll is None:
            raise DatapathError("ring buffer closed")
        try:
            self._epoll.poll(timeout_ms / 1000 if timeout_ms >= 0 else -1)
        except InterruptedError:
            pass
        return self.consume()

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
            _libc.munmap(self._prod, self._prod_len)
            _libc.munmap(self._cons, self._cons_len)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
