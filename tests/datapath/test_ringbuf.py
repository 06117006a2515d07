"""The ring buffer reader (enforcer/datapath/ringbuf.py) against the
kernel's ring buffer: records in order and intact, across the end of the
data area (wrap-around), discarded records skipped, a full ring, epoll
wake-ups, and several producers at once. The producer is
bpf/tests/ringbuf.c (a one-page ring), run with BPF_PROG_TEST_RUN; the
events ring of the real datapath is read by the same reader in every
datapath test that looks at events."""

from __future__ import annotations

import ctypes
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from enforcer.datapath import bpfsys
from enforcer.datapath.loader import BPF_DIR, _compile
from enforcer.datapath.ringbuf import BUSY_BIT, DISCARD_BIT, HEADER_SIZE, RingBuffer

SIZES = (8, 13, 36, 100, 1000, 2000)  # by size class, as bpf/tests/ringbuf.c reserves them
RING_BYTES = 4096


class Producer:
    def __init__(self) -> None:
        self.loaded = _compile(BPF_DIR / "tests" / "ringbuf.c", [], ("produce",), cached=True)
        self.fd = self.loaded.fd("produce")
        self.ring_fd = self.loaded.map_fd("ring")

    def produce(self, seq: int, size_class: int, producer: int = 0, discard: bool = False) -> bool:
        frame = bytes(14) + struct.pack("<IHBB", seq, producer, size_class, int(discard)) + bytes(38)
        ret = bpfsys.prog_test_run(self.fd, frame).retval
        assert ret in (0, 1), ret
        return ret == 1


def record(data: bytes) -> tuple[int, int, int, int]:
    """(seq, producer, size, discard) of a record, its contents checked."""
    seq, producer, size_class, discard = struct.unpack_from("<IHBB", data)
    assert len(data) == SIZES[size_class], (len(data), size_class)
    if len(data) > 8:
        assert data[-1] == seq & 0xFF, "last byte"
    return seq, producer, len(data), discard


@pytest.fixture
def producer() -> Iterator[Producer]:
    p = Producer()
    try:
        yield p
    finally:
        p.loaded.cleanup()


def reader(p: Producer, got: list) -> RingBuffer:
    rb = RingBuffer(p.ring_fd, lambda data: got.append(record(data)))
    assert rb.size == RING_BYTES
    return rb


def footprint(size: int) -> int:
    return (size + HEADER_SIZE + 7) & ~7


def test_records_arrive_in_order_and_intact(producer: Producer) -> None:
    got: list = []
    rb = reader(producer, got)
    for seq in range(12):
        assert producer.produce(seq, seq % 4)
    assert rb.consume() == 12
    assert [(s, n) for s, _, n, _ in got] == [(s, SIZES[s % 4]) for s in range(12)]
    assert rb.consumer_pos == rb.producer_pos == sum(footprint(SIZES[s % 4]) for s in range(12))
    assert rb.consume() == 0
    rb.close()


def test_wrap_around_many_times_with_records_across_the_end(producer: Producer) -> None:
    got: list = []
    rb = reader(producer, got)
    pos, straddled, expected = 0, 0, []
    for seq in range(400):
        size_class = (seq * 7) % 6
        assert producer.produce(seq, size_class), f"ring full at {seq}"
        at = pos % RING_BYTES
        straddled += at + HEADER_SIZE + SIZES[size_class] > RING_BYTES
        pos += footprint(SIZES[size_class])
        expected.append((seq, SIZES[size_class]))
        if size_class >= 4 or seq % 3 == 0:  # keep room for the next one (2008 bytes at most)
            rb.consume()
    rb.consume()
    assert [(s, n) for s, _, n, _ in got] == expected
    assert rb.consumer_pos == pos and pos > 50 * RING_BYTES
    assert straddled > 10, "records crossing the end of the data area"
    rb.close()


def test_a_discarded_record_is_skipped(producer: Producer) -> None:
    got: list = []
    rb = reader(producer, got)
    kept = []
    for seq in range(30):
        discard = seq % 3 == 1
        assert producer.produce(seq, seq % 5, discard=discard)
        if not discard:
            kept.append(seq)
        if seq % 4 == 3:
            rb.consume()
    rb.consume()
    assert [s for s, *_ in got] == kept
    assert all(not d for *_, d in got)
    assert rb.consumer_pos == rb.producer_pos, "discarded records' space given back too"
    rb.close()


def test_full_ring_refuses_then_takes_again_once_read(producer: Producer) -> None:
    got: list = []
    rb = reader(producer, got)
    seq = 0
    while producer.produce(seq, 3):
        seq += 1
    assert seq == RING_BYTES // footprint(100)
    assert rb.consume() == seq
    assert producer.produce(seq, 3)
    rb.consume()
    assert [s for s, *_ in got] == list(range(seq + 1))
    rb.close()


def test_poll_wakes_on_a_submitted_record(producer: Producer) -> None:
    got: list = []
    rb = reader(producer, got)
    t0 = time.monotonic()
    assert rb.poll(50) == 0
    later = threading.Timer(0.2, producer.produce, (7, 1))
    later.start()
    try:
        while not got and time.monotonic() - t0 < 5:
            rb.poll(3000)
    finally:
        later.join()
    assert [s for s, *_ in got] == [7]
    assert time.monotonic() - t0 < 2.5, "woken by the submit, not by the poll timeout"
    rb.close()


def test_many_producers_at_once(producer: Producer) -> None:
    """Four threads produce (retrying when the one-page ring is full) while
    the reader polls: each producer's records all arrive, in its order."""
    got: list = []
    rb = reader(producer, got)
    per_producer, producers = 1500, 4
    stop = threading.Event()

    def produce(pid: int) -> None:
        for seq in range(per_producer):
            while not producer.produce(seq, (seq + pid) % 4, producer=pid):
                if stop.is_set():
                    return
                time.sleep(0)

    threads = [threading.Thread(target=produce, args=(pid,)) for pid in range(producers)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    try:
        while len(got) < per_producer * producers and time.monotonic() < deadline:
            rb.poll(100)
    finally:
        stop.set()
        for t in threads:
            t.join()
    by_producer: dict[int, list[int]] = {}
    for seq, pid, _, _ in got:
        by_producer.setdefault(pid, []).append(seq)
    assert {pid: len(s) for pid, s in by_producer.items()} == {pid: per_producer for pid in range(producers)}
    for pid, seqs in by_producer.items():
        assert seqs == list(range(per_producer)), f"producer {pid} out of order"
    rb.close()


def test_a_busy_record_holds_back_the_ones_after_it() -> None:
    """A record reserved but not yet submitted (BUSY) stops the reader even
    when later ones are complete; they are read once it is submitted. Laid
    out by hand in memory as the kernel does (a producer cannot be caught
    between reserve and submit from user space)."""
    size = 128
    mem = (ctypes.c_uint8 * (4096 * 2 + 2 * size))()
    base = ctypes.addressof(mem)
    cons, prod, data = base, base + 4096, base + 8192
    rb = RingBuffer.__new__(RingBuffer)
    rb.size, rb.mask, rb._cons, rb._prod, rb._data = size, size - 1, cons, prod, data
    from enforcer.datapath.ringbuf import _memory_order

    rb._order = _memory_order()
    rb._epoll = object()  # type: ignore[assignment]  # only checked for None by consume()
    got: list[bytes] = []
    rb.callback = got.append

    def put(pos: int, header: int, payload: bytes) -> None:
        raw = struct.pack("<II", header, 0) + payload
        for i, b in enumerate(raw):  # the data area is mapped twice
            ctypes.c_uint8.from_address(data + (pos + i) % size).value = b
            ctypes.c_uint8.from_address(data + size + (pos + i) % size).value = b

    start = 104
    ctypes.c_uint64.from_address(cons).value = start
    put(start, BUSY_BIT | 4, b"aaaa")
    put(start + 16, 4, b"bbbb")  # header at 120..127, payload across the end
    put(start + 32, DISCARD_BIT | 4, b"cccc")
    put(start + 48, 12, b"dddddddddddd")
    ctypes.c_uint64.from_address(prod).value = start + 72
    assert rb.consume() == 0 and rb.consumer_pos == start
    put(start, 4, b"aaaa")
    assert rb.consume() == 3
    assert got == [b"aaaa", b"bbbb", b"dddddddddddd"]
    assert rb.consumer_pos == rb.producer_pos == start + 72
    rb._epoll = None  # nothing mapped to release
