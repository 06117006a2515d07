"""deploy/crds: the network-policy-api CRDs the Vagrant lab installs,
vendored byte for byte (deploy/crds/network-policy-api/SOURCES names each
file's tag, commit, upstream path, git blob id and sha256). Each parses, is
the CRD of the kind, group, version and channel its place says, and the
kinds are the ones the enforcer reads (model/clusterpolicy.py) and its
ClusterRole grants."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from enforcer.model import clusterpolicy as cp

from .conftest import CRDS, load_docs

SOURCES = CRDS / "network-policy-api" / "SOURCES"
# (bundle, file) -> (kind, plural, version)
EXPECTED = {
    ("v0.2.0", "policy.networking.k8s.io_clusternetworkpolicies.yaml"):
        (cp.CNP_KIND, "clusternetworkpolicies", "v1alpha2"),
    ("v0.1.7", "policy.networking.k8s.io_adminnetworkpolicies.yaml"):
        (cp.ANP_KIND, "adminnetworkpolicies", "v1alpha1"),
    ("v0.1.7", "policy.networking.k8s.io_baselineadminnetworkpolicies.yaml"):
        (cp.BANP_KIND, "baselineadminnetworkpolicies", "v1alpha1"),
}
CHANNELS = ("standard", "experimental")


def sources() -> list[list[str]]:
    return [line.split() for line in SOURCES.read_text().splitlines() if line and not line.startswith("#")]


def crd_files() -> list[Path]:
    return sorted(CRDS.rglob("*.yaml"))


def test_every_file_is_listed_once_with_its_checksums():
    rows = sources()
    assert sorted(r[0] for r in rows) == sorted(str(p.relative_to(SOURCES.parent)) for p in crd_files())
    assert len(rows) == len(EXPECTED) * len(CHANNELS)
    for path, tag, commit, upstream, blob, sha256 in rows:
        data = (SOURCES.parent / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha256, path
        assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == blob, path  # git's blob id
        assert path.startswith(f"{tag}/") and len(commit) == 40
        assert upstream == f"config/crd/{path.split('/')[1]}/{Path(path).name}"


@pytest.mark.parametrize("bundle,name", sorted(EXPECTED))
@pytest.mark.parametrize("channel", CHANNELS)
def test_crd_is_the_kind_version_and_channel_of_its_place(bundle, name, channel):
    (crd,) = load_docs(CRDS / "network-policy-api" / bundle / channel / name)
    kind, plural, version = EXPECTED[(bundle, name)]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1" and crd["kind"] == "CustomResourceDefinition"
    meta, spec = crd["metadata"], crd["spec"]
    assert meta["name"] == f"{plural}.policy.networking.k8s.io"
    assert meta["annotations"]["policy.networking.k8s.io/bundle-version"] == bundle
    assert meta["annotations"]["policy.networking.k8s.io/channel"] == channel
    assert spec["group"] == "policy.networking.k8s.io" and spec["scope"] == "Cluster"
    assert spec["names"]["kind"] == kind and spec["names"]["plural"] == plural
    served = [v for v in spec["versions"] if v["served"]]
    assert [v["name"] for v in served] == [version] and served[0]["storage"]
    assert f"policy.networking.k8s.io/{version}" in (cp.API_VERSION, cp.API_VERSION_V1ALPHA1)


def test_experimental_is_a_superset_of_standard_for_cluster_network_policy():
    """domainNames (an experimental peer) exists only in the experimental
    channel; the parser knows it, and the lab installs experimental by
    default."""
    def text(channel: str) -> str:
        return (CRDS / "network-policy-api/v0.2.0" / channel /
                "policy.networking.k8s.io_clusternetworkpolicies.yaml").read_text()
    assert "domainNames:" in text("experimental") and "domainNames:" not in text("standard")
