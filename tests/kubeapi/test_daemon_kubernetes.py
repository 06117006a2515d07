"""The daemon on `--source kubernetes`, in the lab, against the fake API
server (listening inside the lab node's network namespace), driven by the
real `kubernetes` client: adds, updates, deletes, label changes, an expired
watch and an API server restart all converge to the right probe results."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from enforcer.lab.cluster import DEMO_SPEC, lab_down, lab_up
from enforcer.lab.loader import DaemonProcess
from enforcer.lab.netns import entered, netns_path
from enforcer.lab.probe import ProbeSpec, probe_many

from .fake_apiserver import FakeApiServer

pytestmark = pytest.mark.lab
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def world():
    prefix = f"enk{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="enforcer-k8s-"))
    pin = Path(f"/sys/fs/bpf/enforcer-k8stest-{prefix}")
    _, state = lab_up(prefix, work / "manifests", DEMO_SPEC)

    def node_socket(port: int) -> socket.socket:
        with entered(state.node_netns):
            return socket.create_server(("127.0.0.1", port))

    fake = FakeApiServer(make_socket=node_socket).start()
    fake.bookmark_interval = 0.5
    for obj in yaml.safe_load((work / "manifests" / "lab-cluster.yaml").read_text())["items"]:
        fake.create(obj)
    kubeconfig = work / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": fake.url}}],
        "users": [{"name": "lab", "user": {}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}]}))
    daemon = DaemonProcess(state.node_netns, pin, "kubernetes", "lab-node", workdir=work / "daemon",
                           extra_args=["--kubeconfig", str(kubeconfig)])
    try:
        daemon.start()
        yield {"fake": fake, "daemon": daemon, "state": state}
    finally:
        daemon.stop()
        subprocess.run(["nsenter", f"--net={netns_path(state.node_netns)}", sys.executable, "-m", "enforcer",
                        "cleanup", "--pin-dir", str(pin)], capture_output=True)
        daemon.close()
        fake.stop()
        lab_down(prefix)
        shutil.rmtree(pin, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def examples() -> dict[str, dict]:
    out = {}
    for f in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            out[doc["metadata"]["name"]] = doc
    return out


def converge(w) -> None:  # type: ignore[no-untyped-def]
    w["daemon"].wait_synced(f"rv:{w['fake'].resource_version}", timeout=20)


def check(w, expected: dict[tuple[str, str, int], bool]) -> None:  # type: ignore[no-untyped-def]
    st = w["state"]
    sources = {k: v["netns"] for k, v in st.pods.items()} | {k: v["netns"] for k, v in st.externals.items()}
    keys = list(expected)
    # Expected answers may wait on proxy ARP (up to 0.8 s in the routed lab).
    results = probe_many([ProbeSpec(sources[s], st.pods[d]["ipv4"], port, timeout=3.0 if expected[(s, d, port)] else 1.0)
                          for s, d, port in keys])
    got = {k: r.ok for k, r in zip(keys, results, strict=False)}
    wrong = {k: (expected[k], got[k]) for k in keys if expected[k] != got[k]}
    if wrong:
        from enforcer.api import client
        from enforcer.v1 import enforcer_pb2 as pb

        stub = client.connect(w["daemon"].socket)
        why = [client.show_explain(stub, False, pb.ExplainRequest(
            source=st.externals[s]["ipv4"] if s in st.externals else s, destination=d, port=port))
            for s, d, port in wrong]
        from enforcer.datapath.maps import DatapathMaps, ct_key_text

        with DatapathMaps(w["daemon"].pin_dir) as maps:
            ct = [f"{ct_key_text(k)} origin={v.origin} flags={v.flags:#x} reason={v.reason} ep={v.endpoint_id}"
                  for k, v in maps.conntrack()]
        counters = client.show_counters(stub, False, "foo", "web")
        raise AssertionError(f"(expected, got): {wrong}\n" + "\n".join(why) + "\nconntrack:\n" + "\n".join(ct)
                             + "\n" + counters + "\n" + w["daemon"].log_tail(10))


OPEN = {("bar/client", "foo/web", 80): True, ("lb", "foo/web", 80): True, ("foo/web", "foo/api", 81): True,
        ("bar/client", "foo/api", 81): True}
EXAMPLES_IN_FORCE = {("bar/client", "foo/web", 80): False, ("lb", "foo/web", 80): True,
                     ("foo/web", "foo/api", 81): True, ("bar/client", "foo/api", 81): False}


def test_converges_through_changes_expiry_and_restarts(world):
    fake, pols = world["fake"], examples()
    converge(world)
    check(world, OPEN)

    for p in pols.values():  # adds
        fake.create(p)
    converge(world)
    check(world, EXAMPLES_IN_FORCE)

    web = copy.deepcopy(pols["web-from-foo-and-lb"])  # update: also from namespace bar
    web["spec"]["ingress"][0]["from"].append({"namespaceSelector": {"matchLabels": {"tenant": "bar"}}})
    fake.update(web)
    converge(world)
    check(world, EXAMPLES_IN_FORCE | {("bar/client", "foo/web", 80): True})

    bar = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bar", "labels": {"tenant": "other"}}}
    fake.update(bar)  # namespace label change: no longer selected
    converge(world)
    check(world, EXAMPLES_IN_FORCE)

    web_pod = next(o for o in fake.state.objects.values() if o["kind"] == "Pod" and o["metadata"]["name"] == "web")
    relabelled = copy.deepcopy(web_pod)
    relabelled["metadata"]["labels"] = {"app": "web2"}  # pod label change: api no longer allows it
    fake.update(relabelled)
    converge(world)
    check(world, EXAMPLES_IN_FORCE | {("foo/web", "foo/api", 81): False, ("lb", "foo/web", 80): False})

    fake.delete("NetworkPolicy", "foo", "web-from-foo-and-lb")  # delete
    fake.update(web_pod)
    converge(world)
    check(world, EXAMPLES_IN_FORCE | {("lb", "foo/web", 80): False})

    # Expired watch: while the daemon is cut off, the default deny goes and
    # history is compacted; it must relist and open foo again.
    fake.stop()
    fake.delete("NetworkPolicy", "foo", "default-deny-ingress")
    fake.delete("NetworkPolicy", "foo", "api-from-web")
    fake.compact()
    fake.start()
    converge(world)
    check(world, OPEN)
    assert "410 Gone" in world["daemon"].log_text()

    # API server restart, history kept: the watch resumes, a new policy lands.
    fake.restart(down_for=1.0)
    fake.create(pols["default-deny-ingress"])
    converge(world)
    check(world, {("bar/client", "foo/web", 80): False, ("lb", "foo/web", 80): False, ("foo/web", "foo/api", 81): False})


def test_services_from_the_api_become_frontends(world):
    """A Service created, changed and deleted through the API server: its
    ClusterIP ports (and NodePorts on the node's addresses) appear in and
    leave the datapath's services map, where pods' egress waits for DNAT."""
    import ipaddress
    import time

    from enforcer.datapath.maps import DatapathMaps

    fake, daemon = world["fake"], world["daemon"]
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api-web", "namespace": "foo"},
           "spec": {"type": "ClusterIP", "clusterIPs": ["10.96.7.7"], "selector": {"app": "web"},
                    "ports": [{"port": 80, "targetPort": "http", "protocol": "TCP"}]}}
    vip = ipaddress.ip_address("10.96.7.7")

    def frontends_become(want: set) -> None:  # type: ignore[type-arg]
        deadline = time.monotonic() + 15
        with DatapathMaps(daemon.pin_dir) as maps:
            while True:
                got = {f for f in maps.services() if f[0] == vip}
                if got == want or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        assert got == want, daemon.log_tail(20)

    fake.create(copy.deepcopy(svc))
    frontends_become({(vip, 6, 80)})
    changed = copy.deepcopy(svc)
    changed["spec"]["ports"].append({"port": 53, "protocol": "UDP"})
    fake.update(changed)
    frontends_become({(vip, 6, 80), (vip, 17, 53)})
    fake.delete("Service", "foo", "api-web")
    frontends_become(set())


def test_cluster_policies_once_their_crd_is_installed(world):
    """The ClusterNetworkPolicy CRD missing (404) holds nothing back; once
    installed, its objects are watched and enforced on the wire: an Admin
    Deny over what no NetworkPolicy restricts, then gone again."""
    fake = world["fake"]
    fake.uninstall("ClusterNetworkPolicy")
    fake.create({"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": "scratch", "labels": {"purpose": "moves-the-revision"}}})
    converge(world)  # ready and current without the CRD
    check(world, {("foo/web", "bar/client", 80): True, ("lb", "bar/client", 80): True})

    fake.install("ClusterNetworkPolicy")
    fake.create({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
                 "metadata": {"name": "bar-from-foo"},
                 "spec": {"tier": "Admin", "priority": 5,
                          "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "bar"}}},
                          "ingress": [{"name": "no-foo", "action": "Deny", "from": [
                              {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "foo"}}}]}]}})
    _converge_until(world, lambda: _has_cluster_policy(world, "bar-from-foo"))
    check(world, {("foo/web", "bar/client", 80): False, ("lb", "bar/client", 80): True})

    fake.delete("ClusterNetworkPolicy", None, "bar-from-foo")
    converge(world)
    check(world, {("foo/web", "bar/client", 80): True})


def _has_cluster_policy(world, name: str) -> bool:  # type: ignore[no-untyped-def]
    from enforcer.api import client
    from enforcer.v1 import enforcer_pb2 as pb

    stub = client.connect(world["daemon"].socket)
    return any(c.name == name for c in stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5).cluster_policies)


def _converge_until(world, done, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """The CRD's kind is asked again with backoff once it was absent: wait
    for the daemon to have it, then for the revision."""
    import time

    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, world["daemon"].log_tail(20)
        time.sleep(0.2)
    converge(world)
