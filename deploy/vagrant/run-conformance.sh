#!/usr/bin/env bash
# The project's conformance suite (tests/conformance/cases.py: upstream's
# NetworkPolicy e2e cases) against the lab cluster, on the control plane:
#
#   vagrant ssh cp -c 'sudo /vagrant/deploy/vagrant/run-conformance.sh [RUNNER ARGS]'
#   vagrant provision cp --provision-with conformance
#
# Waits until every node is Ready and the enforcer DaemonSet is ready on all
# of them, then runs tests/conformance/cluster_runner.py with the system
# python3 (it needs only the standard library). Arguments go to the runner,
# e.g. --case ID, -k ipblock, --no-sctp, --keep; see --help.
set -euo pipefail

REPO=${REPO:-/vagrant}
EXPECTED_NODES=${EXPECTED_NODES:-3}
WAIT_MINUTES=${WAIT_MINUTES:-20}
export KUBECONFIG=${KUBECONFIG:-/etc/kubernetes/admin.conf}

log() { printf '[conformance] %s\n' "$*"; }

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
kubectl -n enforcer-system get pods -o wide

cd "$REPO"
log "python3 -m tests.conformance.cluster_runner $*"
exec python3 -m tests.conformance.cluster_runner "$@"
