"""Shared test set-up. The suite runs as root on the real kernel: the
datapath tests load BPF programs and the lab tests build network namespaces.
Running those as another user is a set-up error, not a reason to skip.

Unit tests (UNIT_PATHS: the compiler, the model, the sources, the API's
messages, the deploy files, the architecture, ...) need neither root nor BPF
nor network namespaces: they are marked `unit` and run as any user
(`make unit` runs `-m unit` as nobody). Every other test is marked `root`;
a non-root session that selects one is refused.

Parallel runs (pytest-xdist, `make test` uses `-n 4`): the
suite mostly waits (on probes that must time out, on daemons), so it runs in
several worker processes even on two cores. Every name a test gives to
shared state carries its process id (network namespaces, pins under
/sys/fs/bpf, work directories), and the sweeps of a crashed run's leftovers
only remove names of processes that no longer exist, so workers never touch
each other's labs. Each test module is one group, run by one worker in file
order (its module fixtures are built once); the long conformance modules are
split in two, per lab fixture parameter (scheduling_group()).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

# Modules split into one scheduling group per value of their lab fixture's
# parameter (IPv4, IPv6): the longest modules, each half on a lab of its own.
# Smaller pieces would cost more lab and daemon starts (CPU, on two cores)
# than they save in waiting.
SPLIT_BY_LAB_PARAM = (
    "tests/conformance/test_conformance.py",
    "tests/conformance/test_conformance_multinode.py",
    "tests/conformance/cnp/test_cnp_conformance.py",
)
# Modules sharing a session-scoped fixture that loads the datapath
# (tests/datapath/conftest.py: harness_session): one group, so it is built
# once rather than once per worker.
SHARED_SESSION_GROUPS = {
    module: "tests/datapath: harness_session"
    for module in ("tests/datapath/test_packets.py", "tests/datapath/test_crafted.py",
                   "tests/datapath/test_services.py", "tests/datapath/test_tiers.py")
}


def scheduling_group(nodeid: str) -> str:
    """The group a test runs in under xdist: one worker runs a group's tests
    in collection order. Its module, but see SPLIT_BY_LAB_PARAM and
    SHARED_SESSION_GROUPS."""
    module = nodeid.split("::", 1)[0]
    if module in SPLIT_BY_LAB_PARAM and "[" in nodeid:
        # The lab fixture's parameter (ipv4/ipv6) is the first part of the id.
        return f"{module}::{nodeid.split('[', 1)[1].split('-', 1)[0]}"
    return SHARED_SESSION_GROUPS.get(module, module)


if importlib.util.find_spec("xdist") is not None:  # a hook pytest refuses without the plugin

    def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
        """With -n (xdist's default --dist load): its loadscope scheduler
        (largest groups first) over scheduling_group()'s groups. Not --dist
        loadgroup: that marks groups by rewriting node ids, which pytest
        9.2's structured ids ignore, so every test went its own way."""
        if config.getoption("dist") != "load":
            return None  # another --dist asked for: xdist's own
        from xdist.scheduler import LoadScopeScheduling

        class ByGroup(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return scheduling_group(nodeid)

        return ByGroup(config, log)


# Tests that need neither root nor BPF nor network namespaces (a directory
# ends with "/"). Anything not listed needs root: a new test file is a unit
# test only once it is listed here (and passes as nobody: make unit).
UNIT_PATHS = (
    "tests/compiler/",
    "tests/model/",
    "tests/sources/",
    "tests/kubeapi/test_source.py",
    "tests/kubeapi/test_source_cluster_policies.py",
    "tests/api/test_proto_mirror.py",
    "tests/api/test_status_bounded.py",
    "tests/api/test_tiers_api.py",
    "tests/api/test_api_socket.py",
    "tests/conformance/test_cases_data.py",
    "tests/conformance/cnp/test_cnp_data.py",
    "tests/datapath/test_reasons.py",
    "tests/datapath/test_maps_unit.py",
    "tests/datapath/test_bytecode_unit.py",
    "tests/datapath/test_revoke_affected.py",
    "tests/daemon/test_runner_unit.py",
    "tests/deploy/test_manifests.py",
    "tests/deploy/test_entrypoint.py",
    "tests/deploy/test_health.py",
    "tests/deploy/test_vagrant.py",
    "tests/deploy/test_bpf_syscall_number.py",
    "tests/deploy/test_cluster_runner.py",
    "tests/history/",
    "tests/test_architecture.py",
    "tests/test_packaging.py",
)


def is_unit(nodeid: str) -> bool:
    path = nodeid.split("::", 1)[0]
    return any(path.startswith(p) if p.endswith("/") else path == p for p in UNIT_PATHS)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: needs neither root nor BPF nor network namespaces (make unit)")
    config.addinivalue_line("markers", "root: needs root (BPF programs, network namespaces, other users)")
    # HZ is measured (a BPF program and a 0.3 s wait) by every daemon start
    # unless the environment gives it: measure it once for the session and
    # its workers and daemons (they inherit the environment).
    if os.geteuid() == 0 and not os.environ.get("ENFORCER_KERNEL_HZ"):
        from enforcer.datapath.loader import KERNEL_HZ_ENV, measure_kernel_hz

        try:
            os.environ[KERNEL_HZ_ENV] = str(measure_kernel_hz())
        except Exception:  # no BPF here: each daemon measures (and fails) on its own
            pass
    # One bytecode cache for the session, its workers and their daemons
    # (they inherit the environment): each datapath variant is compiled once
    # per session, not once per daemon start or harness. Per session, not
    # kept between them, so that every run compiles (and tests the compile
    # path) at least once; tests of the cache itself use their own.
    if os.geteuid() == 0 and not os.environ.get(CACHE_DIR_ENV) and not hasattr(config, "workerinput"):
        _sweep_session_caches()
        os.environ[CACHE_DIR_ENV] = str(SESSION_CACHE_PREFIX.with_name(f"{SESSION_CACHE_PREFIX.name}{os.getpid()}"))
        config.stash[_SESSION_CACHE] = Path(os.environ[CACHE_DIR_ENV])


CACHE_DIR_ENV = "ENFORCER_BPF_CACHE_DIR"  # enforcer.datapath.bytecode's
SESSION_CACHE_PREFIX = Path("/tmp/enforcer-test-bpf-cache-")
_SESSION_CACHE = pytest.StashKey[Path]()


def _sweep_session_caches() -> None:
    """Session caches of test runs that are gone (killed before unconfigure)."""
    for path in SESSION_CACHE_PREFIX.parent.glob(f"{SESSION_CACHE_PREFIX.name}*"):
        pid = path.name.removeprefix(SESSION_CACHE_PREFIX.name)
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    cache = config.stash.get(_SESSION_CACHE, None)
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)
        os.environ.pop(CACHE_DIR_ENV, None)


def pytest_collection_finish(session: pytest.Session) -> None:
    if os.geteuid() == 0:
        return
    needs_root = [item.nodeid for item in session.items if item.get_closest_marker("root")]
    if needs_root:
        raise pytest.UsageError(
            f"{len(needs_root)} of the selected tests need root (BPF, network namespaces), "
            f"{needs_root[0]} first: run them as root (make test), or only the unit tests (make unit, -m unit)")


@pytest.hookimpl(tryfirst=True)  # before -m selects by these marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.unit if is_unit(item.nodeid) else pytest.mark.root)
