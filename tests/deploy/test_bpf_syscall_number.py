"""bpf(2)'s syscall number per architecture: the image builds for any, and
x86_64's 321 is not bpf elsewhere. Numbers from the kernel's syscall tables
(arch/*/syscall*.tbl, include/uapi/asm-generic/unistd.h)."""

from __future__ import annotations

import platform
import struct

import pytest

from enforcer.datapath import bpfsys
from enforcer.errors import DatapathError


@pytest.mark.parametrize("machine,bits,multiarch,number", [
    ("x86_64", 64, "x86_64-linux-gnu", 321),
    ("x86_64", 32, "i386-linux-gnu", 357),        # 32-bit userland on a 64-bit kernel
    ("x86_64", 32, "x86_64-linux-gnux32", 0x40000000 + 321),
    ("i386", 32, "", 357),
    ("i686", 32, "", 357),
    ("aarch64", 64, "", 280),
    ("aarch64", 32, "", 386),                     # armhf userland on an arm64 kernel
    ("armv7l", 32, "", 386),
    ("armv6l", 32, "", 386),
    ("armv8l", 32, "", 386),
    ("arm", 32, "", 386),
    ("ppc64le", 64, "", 361),
    ("ppc64", 64, "", 361),
    ("s390x", 64, "", 351),
    ("riscv64", 64, "", 280),
    ("loongarch64", 64, "", 280),
])
def test_bpf_syscall_number(machine: str, bits: int, multiarch: str, number: int):
    assert bpfsys.BPF_SYSCALL_BY_ABI[bpfsys.bpf_syscall_abi(machine, bits, multiarch)] == number


@pytest.mark.parametrize("machine", ["mips64", "sparc64", "alpha", "", "x86_65"])
def test_unknown_machine_is_a_clear_error(machine: str):
    with pytest.raises(DatapathError, match=f"no bpf\\(2\\) syscall number known for machine {machine!r}"):
        bpfsys.bpf_syscall_number(machine, 64)


def test_this_machine():
    if platform.machine() == "x86_64" and struct.calcsize("P") == 8:
        assert bpfsys.bpf_syscall_number() == 321
    # The number in use is the one derived here, and it reaches the kernel's bpf():
    # BPF_OBJ_GET on a path that is no pin fails with ENOENT (another syscall would not).
    assert bpfsys._nr_bpf() == bpfsys.bpf_syscall_number()
    with pytest.raises(OSError) as e:
        bpfsys.obj_get("/sys/fs/bpf/enforcer-no-such-pin")
    assert e.value.errno == 2
