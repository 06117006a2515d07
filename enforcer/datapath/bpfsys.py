"""Thin wrapper over the bpf(2) syscall for what bcc's Python bindings do not
offer: opening pinned objects, map access by fd, object info and
BPF_PROG_TEST_RUN. Structures follow include/uapi/linux/bpf.h."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import re
import struct
import sysconfig
from functools import lru_cache

from ..errors import DatapathError

# bpf(2)'s number in each ABI, from the kernel's syscall tables:
# arch/x86/entry/syscalls/syscall_64.tbl and syscall_32.tbl,
# arch/arm/tools/syscall.tbl (EABI), arch/powerpc/kernel/syscalls/syscall.tbl
# (32 and 64 bit alike), arch/s390/kernel/syscalls/syscall.tbl, and
# include/uapi/asm-generic/unistd.h for arm64, riscv and loongarch.
BPF_SYSCALL_BY_ABI = {
    "x86_64": 321,
    "x32": 0x40000000 | 321,  # __X32_SYSCALL_BIT + the x86_64 number
    "i386": 357,
    "arm": 386,
    "arm64": 280,
    "powerpc": 361,
    "s390": 351,
    "riscv": 280,
    "loongarch": 280,
}


def bpf_syscall_abi(machine: str, pointer_bits: int, multiarch: str = "") -> str:
    """The syscall ABI this process uses: the kernel's machine
    (platform.machine(), i.e. uname -m) and this process's pointer width (a
    32-bit userland on a 64-bit kernel uses the 32-bit table)."""
    m = machine.lower()
    if m in ("x86_64", "amd64"):
        if pointer_bits == 64:
            return "x86_64"
        return "x32" if multiarch.endswith("x32") else "i386"
    if re.fullmatch(r"i[3-6]86", m):
        return "i386"
    if m in ("aarch64", "aarch64_be", "arm64"):
        return "arm64" if pointer_bits == 64 else "arm"
    if m.startswith("arm"):  # armv7l, armv6l, armv8l (32-bit on arm64), armv5tel, arm
        return "arm"
    if m in ("ppc64le", "ppc64", "ppc"):
        return "powerpc"
    if m in ("s390x", "s390"):
        return "s390"
    if m in ("riscv64", "riscv32"):
        return "riscv"
    if m == "loongarch64":
        return "loongarch"
    raise DatapathError(f"no bpf(2) syscall number known for machine {machine!r} ({pointer_bits}-bit userland); "
                        f"known: x86_64, i386/i686, aarch64, armv7l/armv6l/arm, ppc64le/ppc64, s390x, "
                        f"riscv64, loongarch64")


def bpf_syscall_number(machine: str | None = None, pointer_bits: int | None = None) -> int:
    """bpf(2)'s syscall number here (or on the machine given)."""
    abi = bpf_syscall_abi(platform.machine() if machine is None else machine,
                          struct.calcsize("P") * 8 if pointer_bits is None else pointer_bits,
                          sysconfig.get_config_var("MULTIARCH") or "")
    return BPF_SYSCALL_BY_ABI[abi]


@lru_cache(maxsize=1)
def _nr_bpf() -> int:
    return bpf_syscall_number()


BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_LOAD = 5
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26
BPF_MAP_DELETE_BATCH = 27

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_RINGBUF = 27
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_OBJ_NAME_LEN = 16
PERCPU_TYPES = {5, BPF_MAP_TYPE_PERCPU_ARRAY, 10}  # percpu hash, array, lru percpu hash

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfSyscallError(OSError):
    pass


class _MapElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # or next_key
        ("flags", ctypes.c_uint64),
    ]


class _BatchAttr(ctypes.Structure):
    """union bpf_attr's `batch` member (BPF_MAP_*_BATCH)."""

    _fields_ = [
        ("in_batch", ctypes.c_uint64),   # where to go on from: NULL, the start
        ("out_batch", ctypes.c_uint64),  # where the kernel stopped
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),      # in: room (elements); out: how many were done
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _ObjAttr(ctypes.Structure):
    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
        ("path_fd", ctypes.c_int32),
    ]


class _TestRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


class MapInfo(ctypes.Structure):
    """Leading fields of struct bpf_map_info."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


class ProgInfo(ctypes.Structure):
    """Leading fields of struct bpf_prog_info. The tag is the kernel's hash
    of the instructions with map fds zeroed (bpf_prog_calc_tag)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    ]


def prog_info(fd: int) -> ProgInfo:
    info = ProgInfo()
    _bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)))
    return info


def prog_id(fd: int) -> int:
    """The kernel id of a program."""
    return int(prog_info(fd).id)


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("map_ifindex", ctypes.c_uint32),
        ("btf_fd", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
    ]


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, flags: int = 0,
               name: str = "") -> int:
    """BPF_MAP_CREATE; returns the new map's fd. name: the kernel's object
    name (what bcc gives a map: its C name, cut to 15 characters)."""
    attr = _MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size, max_entries=max_entries,
                          map_flags=flags, map_name=name.encode()[: BPF_OBJ_NAME_LEN - 1])
    return _bpf(BPF_MAP_CREATE, attr)


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    ]


class ProgLoadError(BpfSyscallError):
    """BPF_PROG_LOAD refused: errno, and the verifier's log (its tail)."""

    def __init__(self, err: int, log: str) -> None:
        super().__init__(err, os.strerror(err))
        self.log = log

    def __str__(self) -> str:
        tail = " | ".join(self.log.strip().splitlines()[-6:])
        return f"[Errno {self.errno}] {self.strerror}" + (f": {tail}" if tail else "")


def prog_load(prog_type: int, insns: bytes, license: str = "GPL", name: str = "", prog_flags: int = 0,
              kern_version: int = 0, log_size: int = 1 << 20) -> int:
    """BPF_PROG_LOAD of raw instructions (8 bytes each, map fds already in
    their ld_imm64 immediates); returns the program's fd. On a refusal the
    load is repeated with the verifier's log on, for ProgLoadError."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())

    def attempt(log: ctypes.Array | None) -> int:
        attr = _ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8, insns=ctypes.addressof(code),
                             license=ctypes.addressof(lic), kern_version=kern_version, prog_flags=prog_flags,
                             prog_name=name.encode()[: BPF_OBJ_NAME_LEN - 1])
        if log is not None:
            attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ctypes.addressof(log)
        return _bpf(BPF_PROG_LOAD, attr)

    try:
        return attempt(None)
    except BpfSyscallError as first:
        log = ctypes.create_string_buffer(log_size)
        try:
            fd = attempt(log)  # loaded this time (a transient failure): keep it
        except BpfSyscallError as second:
            raise ProgLoadError(second.errno or first.errno or 0,
                                log.value.decode(errors="replace")) from first
        return fd


class SkBuffCtx(ctypes.Structure):
    """Leading fields of struct __sk_buff accepted as test-run context."""

    _fields_ = [
        ("len", ctypes.c_uint32),
        ("pkt_type", ctypes.c_uint32),
        ("mark", ctypes.c_uint32),
        ("queue_mapping", ctypes.c_uint32),
        ("protocol", ctypes.c_uint32),
        ("vlan_present", ctypes.c_uint32),
        ("vlan_tci", ctypes.c_uint32),
        ("vlan_proto", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("tc_index", ctypes.c_uint32),
        ("cb", ctypes.c_uint32 * 5),
        ("hash", ctypes.c_uint32),
        ("tc_classid", ctypes.c_uint32),
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("napi_id", ctypes.c_uint32),
        ("family", ctypes.c_uint32),
        ("remote_ip4", ctypes.c_uint32),
        ("local_ip4", ctypes.c_uint32),
        ("remote_ip6", ctypes.c_uint32 * 4),
        ("local_ip6", ctypes.c_uint32 * 4),
        ("remote_port", ctypes.c_uint32),
        ("local_port", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("flow_keys", ctypes.c_uint64),
        ("tstamp", ctypes.c_uint64),
        ("wire_len", ctypes.c_uint32),
        ("gso_segs", ctypes.c_uint32),
    ]


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    ret = _libc.syscall(_nr_bpf(), cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfSyscallError(err, os.strerror(err))
    return int(ret)


def obj_get(path: str) -> int:
    """Open a pinned BPF object; returns a new fd."""
    p = ctypes.create_string_buffer(path.encode())
    attr = _ObjAttr(pathname=ctypes.addressof(p))
    return _bpf(BPF_OBJ_GET, attr)


def obj_pin(fd: int, path: str) -> None:
    """Pin a BPF object (map or program fd) at path in a bpffs."""
    p = ctypes.create_string_buffer(path.encode())
    _bpf(BPF_OBJ_PIN, _ObjAttr(pathname=ctypes.addressof(p), bpf_fd=fd))


class _GetIdAttr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


def prog_fd_by_id(prog_id: int) -> int:
    """A new fd for a loaded program (e.g. one tc holds), by its id."""
    return _bpf(BPF_PROG_GET_FD_BY_ID, _GetIdAttr(id=prog_id))


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return info


def map_lookup(fd: int, key: ctypes.Array | ctypes.Structure, value: ctypes.Array | ctypes.Structure) -> bool:
    attr = _MapElemAttr(map_fd=fd, key=ctypes.addressof(key), value=ctypes.addressof(value))
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, attr)
    except BpfSyscallError as e:
        if e.errno == 2:  # ENOENT
            return False
        raise
    return True


def map_update(fd: int, key: ctypes.Array | ctypes.Structure, value: ctypes.Array | ctypes.Structure,
               flags: int = BPF_ANY) -> None:
    attr = _MapElemAttr(map_fd=fd, key=ctypes.addressof(key), value=ctypes.addressof(value), flags=flags)
    _bpf(BPF_MAP_UPDATE_ELEM, attr)


def map_delete(fd: int, key: ctypes.Array | ctypes.Structure) -> bool:
    attr = _MapElemAttr(map_fd=fd, key=ctypes.addressof(key))
    try:
        _bpf(BPF_MAP_DELETE_ELEM, attr)
    except BpfSyscallError as e:
        if e.errno == 2:
            return False
        raise
    return True


def map_next_key(fd: int, key: ctypes.Array | ctypes.Structure | None,
                 next_key: ctypes.Array | ctypes.Structure) -> bool:
    attr = _MapElemAttr(map_fd=fd, key=ctypes.addressof(key) if key is not None else 0,
                        value=ctypes.addressof(next_key))
    try:
        _bpf(BPF_MAP_GET_NEXT_KEY, attr)
    except BpfSyscallError as e:
        if e.errno == 2:
            return False
        raise
    return True


def map_lookup_batch(fd: int, token_in: ctypes.Array | None, token_out: ctypes.Array,
                     keys: ctypes.Array, values: ctypes.Array, count: int) -> tuple[int, bool]:
    """BPF_MAP_LOOKUP_BATCH: copy up to `count` entries into keys and
    values, going on from token_in (None: from the start); token_out gets
    where to go on from (for a hash map, a bucket index: a u32). Returns
    (entries copied, whether the walk reached the end). A hash map copies
    whole buckets: ENOSPC means one bucket holds more than `count`."""
    attr = _BatchAttr(in_batch=ctypes.addressof(token_in) if token_in is not None else 0,
                      out_batch=ctypes.addressof(token_out), keys=ctypes.addressof(keys),
                      values=ctypes.addressof(values), count=count, map_fd=fd)
    try:
        _bpf(BPF_MAP_LOOKUP_BATCH, attr)
    except BpfSyscallError as e:
        if e.errno == 2:  # ENOENT: the end, with the last entries (if any) copied
            return int(attr.count), True
        raise
    return int(attr.count), False


def map_delete_batch(fd: int, keys: ctypes.Array, count: int) -> tuple[int, int]:
    """BPF_MAP_DELETE_BATCH of the first `count` keys. The kernel stops at
    the first key it cannot delete: returns (keys deleted before it, its
    errno or 0 when all went)."""
    attr = _BatchAttr(keys=ctypes.addressof(keys), count=count, map_fd=fd)
    try:
        _bpf(BPF_MAP_DELETE_BATCH, attr)
    except BpfSyscallError as e:
        return int(attr.count), e.errno or 0
    return int(attr.count), 0


def map_update_batch(fd: int, keys: ctypes.Array, values: ctypes.Array, count: int,
                     elem_flags: int = BPF_ANY) -> tuple[int, int]:
    """BPF_MAP_UPDATE_BATCH of the first `count` entries; like
    map_delete_batch, returns (entries written, errno of the one that
    stopped it or 0)."""
    attr = _BatchAttr(keys=ctypes.addressof(keys), values=ctypes.addressof(values), count=count, map_fd=fd,
                      elem_flags=elem_flags)
    try:
        _bpf(BPF_MAP_UPDATE_BATCH, attr)
    except BpfSyscallError as e:
        return int(attr.count), e.errno or 0
    return int(attr.count), 0


class TestRunResult:
    __slots__ = ("retval", "duration_ns", "data_out", "mark")

    def __init__(self, retval: int, duration_ns: int, data_out: bytes, mark: int = 0) -> None:
        self.retval = retval
        self.duration_ns = duration_ns
        self.data_out = data_out
        self.mark = mark  # skb->mark as the program left it


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1, ifindex: int = 0,
                  mark: int = 0, ingress_ifindex: int = 0) -> TestRunResult:
    """Run a sched_cls program on one frame (BPF_PROG_TEST_RUN). duration_ns
    is the kernel's mean per repetition. ifindex, when > 1, sets the device
    the skb appears on (skb->ifindex); otherwise it is loopback. mark and
    ingress_ifindex set skb->mark and skb->ingress_ifindex (the device a
    forwarded packet came in on; 0 for one the host sent)."""
    buf_in = ctypes.create_string_buffer(data, len(data))
    buf_out = ctypes.create_string_buffer(len(data) + 256)
    ctx = SkBuffCtx()
    # The kernel copies all of its struct __sk_buff out: room for a newer one.
    ctx_out = ctypes.create_string_buffer(512)
    if ifindex > 1:
        ctx.ifindex = ifindex
    ctx.mark = mark
    ctx.ingress_ifindex = ingress_ifindex
    attr = _TestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(data),
        data_size_out=len(buf_out),
        data_in=ctypes.addressof(buf_in),
        data_out=ctypes.addressof(buf_out),
        repeat=repeat,
        ctx_size_in=ctypes.sizeof(ctx),
        ctx_in=ctypes.addressof(ctx),
        ctx_size_out=len(ctx_out),
        ctx_out=ctypes.addressof(ctx_out),
    )
    _bpf(BPF_PROG_TEST_RUN, attr)
    retval = ctypes.c_int32(attr.retval).value
    return TestRunResult(retval, attr.duration, buf_out.raw[: attr.data_size_out],
                         SkBuffCtx.from_buffer_copy(ctx_out.raw[: ctypes.sizeof(SkBuffCtx)]).mark)


@lru_cache(maxsize=1)
def possible_cpus() -> int:
    """Number of possible CPUs: the stride of per-CPU map values."""
    text = open("/sys/devices/system/cpu/possible").read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += (int(hi) if hi else int(lo)) - int(lo) + 1
    return count
