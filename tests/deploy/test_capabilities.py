"""The capability set of deploy/daemonset.yaml, tried on this kernel: the
real daemon (`enforcer run`, directory source) in a lab node namespace, as
root but with its capability bounding set cut to exactly what the DaemonSet
adds (setpriv), as the container runtime does. It must load, attach, sync,
answer the health probe (run with the same capabilities, as kubelet's exec
probe is) and enforce a policy on real traffic. Without CAP_NET_ADMIN it
must not come up: the check is not vacuous."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from enforcer.lab.loader import DaemonProcess, LoaderError
from enforcer.lab.topology import Lab
from enforcer.sources.directory import directory_revision
from tests.conformance import model as M
from tests.support.fast import FAST_POLL

from .conftest import DEPLOY

pytestmark = pytest.mark.lab

NODE_NAME = "lab-node"
PODS = {"xa": "x/a", "xb": "x/b"}


def daemonset_capabilities() -> list[str]:
    ds = next(d for d in yaml.safe_load_all((DEPLOY / "daemonset.yaml").read_text()) if d)
    (main,) = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "enforcer"]
    caps = main["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    return caps["add"]


def restricted_python(tmp: Path, caps: list[str]) -> str:
    """A python that runs with only `caps` (bounding set; root's permitted
    and effective sets follow it on exec), no inheritable ones."""
    bounding = "-all" + "".join(f",+{c.lower()}" for c in caps)
    wrapper = tmp / "python-with-caps"
    wrapper.write_text(f'#!/bin/sh\nexec setpriv --bounding-set={bounding} --inh-caps=-all -- {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def write_source(source: Path, lab: Lab) -> None:
    ips = {model: [lab.pod(name).ip(4), lab.pod(name).ip(6)] for name, model in PODS.items()}
    objects = [M.render_namespace("x")]
    objects += [M.render_pod(model, node_name=NODE_NAME, pod_ips=ips) for model in PODS.values()]
    objects.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": "deny-to-a", "namespace": "x"},
                    "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"]}})
    (source / "cluster.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objects}))


@pytest.fixture
def lab(tmp_path):
    prefix = f"dcap{os.getpid()}"
    Lab.cleanup_stale(prefix)
    lab = Lab(prefix, list(PODS))
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


def start_daemon(lab: Lab, tmp: Path, caps: list[str]) -> tuple[DaemonProcess, Path]:
    pin_dir = Path(f"/sys/fs/bpf/enforcer-deploytest-{os.getpid()}")
    shutil.rmtree(pin_dir, ignore_errors=True)
    source = tmp / "source"
    source.mkdir()
    write_source(source, lab)
    daemon = DaemonProcess(lab.node_netns, pin_dir, source, NODE_NAME, python=restricted_python(tmp, caps),
                           workdir=tmp / "daemon", extra_args=FAST_POLL)
    return daemon, source


def stop_daemon(lab: Lab, daemon: DaemonProcess) -> None:
    daemon.close()
    subprocess.run(["nsenter", f"--net=/run/netns/{lab.node_netns}", sys.executable, "-m", "enforcer",
                    "cleanup", "--pin-dir", str(daemon.pin_dir)], capture_output=True)
    shutil.rmtree(daemon.pin_dir, ignore_errors=True)


def test_daemon_runs_and_enforces_with_exactly_the_daemonsets_capabilities(lab, tmp_path):
    caps = daemonset_capabilities()
    assert caps == ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"]
    daemon, source = start_daemon(lab, tmp_path, caps)
    try:
        daemon.start(timeout=180)
        status = daemon.wait_synced(directory_revision(source), timeout=60)
        assert not status.get("unplaced"), status
        # The readiness probe, run as kubelet runs it: inside the container,
        # with the container's capabilities.
        probe = subprocess.run([restricted_python(tmp_path, caps), str(DEPLOY / "health.py"),
                                "--socket", str(daemon.socket)], capture_output=True, text=True, timeout=30)
        assert probe.returncode == 0 and "SERVING" in probe.stdout, probe.stdout + probe.stderr
        a, b = lab.pod("xa"), lab.pod("xb")
        assert not lab.probe("xb", a.ip(4), 80), "x/a is isolated for ingress: x/b must not reach it"
        assert lab.probe("xa", b.ip(4), 80), "x/b is not isolated"
    finally:
        stop_daemon(lab, daemon)


def test_without_net_admin_the_daemon_does_not_come_up(lab, tmp_path):
    caps = [c for c in daemonset_capabilities() if c != "NET_ADMIN"]
    daemon, _ = start_daemon(lab, tmp_path, caps)
    try:
        with pytest.raises(LoaderError) as failure:
            daemon.start(timeout=180)
        # bcc's word for the kernel's EPERM on loading a tc program
        assert "privileges" in str(failure.value) or "not permitted" in str(failure.value), failure.value
    finally:
        stop_daemon(lab, daemon)
