#!/usr/bin/env bash
# The ClusterNetworkPolicy conformance suite against the lab cluster, on the
# control plane:
#
#   vagrant provision cp --provision-with cnp-conformance
#   vagrant ssh cp -c 'sudo /vagrant/deploy/vagrant/run-cnp-conformance.sh [SUITE FLAGS]'
#
# The project's port of this suite (tests/conformance/cnp/) replays it in a
# one-node netns lab only; it has no cluster runner yet. So this runs
# upstream's own suite, as kube-network-policies' CI does: network-policy-api
# at v0.2.0 (the release whose CRDs deploy/crds vendors; the commit is
# checked), `go test ./conformance -run TestConformanceProfiles` with the
# ClusterNetworkPolicy profile and, with the experimental CRDs, every
# feature (--all-features). Arguments are added to the suite's flags, e.g.
# --debug, --exempt-features=ClusterNetworkPolicyNamedPorts.
#
# Waits, as run-conformance.sh does, for every node and the enforcer on each;
# (re)applies the vendored CRDs of CRD_CHANNEL and checks their bundle
# version. Needs the network: the Go toolchain (go.dev, checked against its
# published sha256), the clone, Go modules, the suite's images. The report
# is written to $WORK/report.yaml.
set -euo pipefail

REPO=${REPO:-/vagrant}
EXPECTED_NODES=${EXPECTED_NODES:-3}
WAIT_MINUTES=${WAIT_MINUTES:-20}
CRD_CHANNEL=${CRD_CHANNEL:-experimental}
GO_VERSION=${GO_VERSION:-1.25.0}        # network-policy-api v0.2.0's go.mod: go 1.25.0
GO_TEST_TIMEOUT=${GO_TEST_TIMEOUT:-60m}
WORK=${WORK:-/var/lib/enforcer-lab/cnp-conformance}
NPAPI_REPO=https://github.com/kubernetes-sigs/network-policy-api.git
NPAPI_TAG=v0.2.0
NPAPI_COMMIT=a17adecd0316b8ff1c3f83939ec0441d68cd6cce
export KUBECONFIG=${KUBECONFIG:-/etc/kubernetes/admin.conf}
export DEBIAN_FRONTEND=noninteractive

log() { printf '[cnp-conformance] %s\n' "$*"; }

case "$CRD_CHANNEL" in
  standard|experimental) ;;
  *) log "CRD_CHANNEL must be standard or experimental, got '$CRD_CHANNEL'"; exit 1 ;;
esac

# -- the cluster: every node Ready, the enforcer ready on each ---------------
deadline=$(( $(date +%s) + WAIT_MINUTES * 60 ))
until [ "$(kubectl get nodes --no-headers 2>/dev/null | awk '$2 == "Ready"' | wc -l)" -ge "$EXPECTED_NODES" ]; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    log "fewer than $EXPECTED_NODES Ready nodes after $WAIT_MINUTES minutes:"
    kubectl get nodes -o wide || true
    exit 1
  fi
  log "waiting for $EXPECTED_NODES Ready nodes"
  sleep 10
done
kubectl -n enforcer-system rollout status daemonset/enforcer --timeout="${WAIT_MINUTES}m"
until read -r desired ready < <(kubectl -n enforcer-system get daemonset enforcer \
        -o jsonpath='{.status.desiredNumberScheduled} {.status.numberReady}{"\n"}') \
      && [ "$desired" -ge "$EXPECTED_NODES" ] && [ "$ready" = "$desired" ]; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    log "the enforcer DaemonSet is not ready on every node:"
    kubectl -n enforcer-system get pods -o wide || true
    exit 1
  fi
  log "waiting for the enforcer on every node"
  sleep 10
done

# -- the CRDs the suite is written against -----------------------------------
crds="$REPO/deploy/crds/network-policy-api"
kubectl apply --server-side --force-conflicts -f "$crds/v0.2.0/$CRD_CHANNEL/" -f "$crds/v0.1.7/$CRD_CHANNEL/"
kubectl wait --for condition=Established --timeout=2m crd/clusternetworkpolicies.policy.networking.k8s.io
bundle=$(kubectl get crd clusternetworkpolicies.policy.networking.k8s.io \
  -o jsonpath='{.metadata.annotations.policy\.networking\.k8s\.io/bundle-version} {.metadata.annotations.policy\.networking\.k8s\.io/channel}')
if [ "$bundle" != "$NPAPI_TAG $CRD_CHANNEL" ]; then
  log "ClusterNetworkPolicy CRD is '$bundle', expected '$NPAPI_TAG $CRD_CHANNEL'"
  exit 1
fi
features=()
if [ "$CRD_CHANNEL" = experimental ]; then
  features=(--all-features)
else
  log "standard CRDs: the suite's experimental features (named ports, node peers) are left out"
fi

# -- the Go toolchain ----------------------------------------------------------
install -d -m 0755 "$WORK"
command -v git >/dev/null || apt-get install -y -qq --no-install-recommends git >/dev/null
export GOROOT="$WORK/go" GOPATH="$WORK/gopath" GOCACHE="$WORK/gocache" GOTOOLCHAIN=local
if [ "$("$GOROOT/bin/go" env GOVERSION 2>/dev/null || true)" != "go$GO_VERSION" ]; then
  tarball="go${GO_VERSION}.linux-$(dpkg --print-architecture).tar.gz"
  log "Go $GO_VERSION ($tarball)"
  curl -fsSL -o "$WORK/$tarball" "https://go.dev/dl/$tarball"
  want=$(curl -fsSL 'https://go.dev/dl/?mode=json&include=all' | python3 -c '
import json, sys
name = sys.argv[1]
print(next(f["sha256"] for r in json.load(sys.stdin) for f in r["files"] if f["filename"] == name))
' "$tarball")
  echo "$want  $WORK/$tarball" | sha256sum --check --quiet
  rm -rf "$GOROOT"
  tar -C "$WORK" -xzf "$WORK/$tarball"
  rm -f "$WORK/$tarball"
fi
export PATH="$GOROOT/bin:$PATH"

# -- the suite -------------------------------------------------------------------
src="$WORK/network-policy-api"
if [ ! -d "$src/.git" ]; then
  log "git clone $NPAPI_REPO ($NPAPI_TAG)"
  git clone --quiet --depth 1 --branch "$NPAPI_TAG" "$NPAPI_REPO" "$src"
fi
got=$(git -C "$src" rev-parse HEAD)
if [ "$got" != "$NPAPI_COMMIT" ]; then
  log "$src is at $got, expected $NPAPI_TAG = $NPAPI_COMMIT"
  exit 1
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml")
cd "$src"
log "go test ./conformance -run TestConformanceProfiles (ClusterNetworkPolicy ${features[*]:-standard features}) $*"
exec go test -v ./conformance -run TestConformanceProfiles -timeout "$GO_TEST_TIMEOUT" -args \
  --conformance-profiles=ClusterNetworkPolicy "${features[@]}" \
  --organization=enforcer --project=enforcer --url="file://$REPO" --version="${version:-unknown}" \
  --contact=maintainers --additional-info="Vagrant lab (deploy/vagrant/run-cnp-conformance.sh)" \
  --report-output="$WORK/report.yaml" "$@"
