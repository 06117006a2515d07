"""A daemon that cannot load its datapath exits with the reason, as it did
when loading came before everything else: the datapath now loads beside
the first read and compile, and its failure still ends the process (here:
pinned maps of another size, which only `enforcer cleanup` may drop)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from enforcer.lab.loader import DaemonProcess, LoaderError, remove_pin_dirs

from .harness import PIN_PREFIX, PIN_ROOT

pytestmark = pytest.mark.lab


def test_a_datapath_that_does_not_load_ends_the_daemon_with_its_reason() -> None:
    netns = f"ensf{os.getpid()}"
    pin_dir = PIN_ROOT / f"{PIN_PREFIX}{os.getpid()}-startfail"
    work = Path(tempfile.mkdtemp(prefix=f"{PIN_PREFIX}{os.getpid()}-startfail-"))
    (work / "src").mkdir()
    (work / "src" / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
    subprocess.run(["ip", "netns", "add", netns], check=True)
    daemons: list[DaemonProcess] = []
    try:
        def daemon(size: int) -> DaemonProcess:
            d = DaemonProcess(netns, pin_dir, work / "src", "n1", workdir=work / f"d{size}",
                              extra_args=["--map-size", f"policy={size}"])
            daemons.append(d)
            return d

        first = daemon(1024)
        first.start(timeout=60)
        first.stop()
        with pytest.raises(LoaderError) as failed:
            daemon(2048).start(timeout=60)
        assert "exited with 1" in str(failed.value) and "enforcer cleanup" in str(failed.value)
    finally:
        for d in daemons:
            d.close()
        subprocess.run(["ip", "netns", "del", netns], check=False)
        remove_pin_dirs([pin_dir])
        subprocess.run(["rm", "-rf", str(work)], check=False)
