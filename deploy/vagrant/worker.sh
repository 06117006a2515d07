#!/usr/bin/env bash
# A lab worker (after common.sh): import the enforcer image built on the
# control plane, then join the cluster. The image is imported first, so the
# DaemonSet's pod starts as soon as the node registers.
#
# Environment (Vagrantfile): CP_IP, LAB_FILES_PORT.
set -euo pipefail

: "${CP_IP:?}" "${LAB_FILES_PORT:?}"
base="http://${CP_IP}:${LAB_FILES_PORT}"
work=/var/lib/enforcer-lab
WAIT_MINUTES=${WAIT_MINUTES:-45}

log() { printf '[worker %s] %s\n' "$(hostname -s)" "$*"; }

# The control plane publishes join.sh last, once the image is ready. With
# providers that bring machines up in parallel it may still be building.
install -d -m 0700 "$work"
deadline=$(( $(date +%s) + WAIT_MINUTES * 60 ))
until curl -fsS -o "$work/join.sh" "$base/join.sh"; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    log "no $base/join.sh after $WAIT_MINUTES minutes; is the control plane provisioned?"
    exit 1
  fi
  log "waiting for the control plane ($base)"
  sleep 15
done

image=$(curl -fsS "$base/image")
if ctr -n k8s.io images ls -q | grep -qxF "$image"; then
  log "image $image already imported"
else
  log "importing $image"
  curl -fsS -o "$work/enforcer-image.tar" "$base/enforcer-image.tar"
  curl -fsS -o "$work/SHA256SUMS" "$base/SHA256SUMS"
  (cd "$work" && sha256sum --check --quiet SHA256SUMS)
  ctr -n k8s.io images import "$work/enforcer-image.tar" >/dev/null
  rm -f "$work/enforcer-image.tar"
fi

if [ -f /etc/kubernetes/kubelet.conf ]; then
  log "already joined"
else
  # One line: kubeadm join <cp>:6443 --token ... --discovery-token-ca-cert-hash sha256:...
  read -r -a join < "$work/join.sh"
  if [ "${join[0]:-}" != kubeadm ] || [ "${join[1]:-}" != join ]; then
    log "unexpected join command in $base/join.sh"
    exit 1
  fi
  log "kubeadm join"
  "${join[@]}" --node-name "$(hostname -s)"
fi
log "done"
