"""Where the datapath's files are: the BPF C sources and the default pin
directory. A leaf module (nothing of enforcer imported), so both the source
preparation (source.py) and the reasons read from the C (reasons.py) can
use it without importing each other."""

from __future__ import annotations

from pathlib import Path


def _bpf_dir() -> Path:
    """bpf/ of a checkout (editable install), else the copy an installed
    package ships as enforcer/_bpf."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent / "bpf", package / "_bpf"):
        if (candidate / "pod_tc.c").exists():
            return candidate
    raise RuntimeError(f"BPF sources not found next to {package} (bpf/ or enforcer/_bpf)")


BPF_DIR = _bpf_dir()
DEFAULT_PIN_DIR = Path("/sys/fs/bpf/enforcer")
