#!/usr/bin/env bash
# The lab's control plane (after common.sh): kubeadm init, flannel, the
# enforcer image (built here once with buildah), files for the workers, and
# `kubectl apply -k deploy/`.
#
# Workers get their join command and the image from this node over HTTP
# (a small file server on the private network, port LAB_FILES_PORT):
# Vagrant's rsync synced folder only copies host -> guest, and a file
# server works the same with every provider. The join command carries a
# bootstrap token in clear text: acceptable on the lab's host-only
# network, nowhere else.
#
# Environment (Vagrantfile): NODE_IP, POD_CIDR, LAB_NET_PREFIX (e.g.
# 192.168.56), FLANNEL_VERSION, LAB_FILES_PORT, CRD_CHANNEL (standard or
# experimental); the repository is at /vagrant.
set -euo pipefail

: "${NODE_IP:?}" "${POD_CIDR:?}" "${LAB_NET_PREFIX:?}" "${FLANNEL_VERSION:?}" "${LAB_FILES_PORT:?}" "${CRD_CHANNEL:?}"
REPO=${REPO:-/vagrant}
LAB_DIR=/srv/enforcer-lab
export KUBECONFIG=/etc/kubernetes/admin.conf
export DEBIAN_FRONTEND=noninteractive
node=$(hostname -s)

log() { printf '[control-plane] %s\n' "$*"; }

# -- cluster --------------------------------------------------------------
if [ ! -f /etc/kubernetes/admin.conf ]; then
  log "kubeadm init (pod network $POD_CIDR)"
  kubeadm init --apiserver-advertise-address "$NODE_IP" --pod-network-cidr "$POD_CIDR" \
    --node-name "$node" 2>&1 | tee /var/log/kubeadm-init.log
fi
install -d -o vagrant -g vagrant /home/vagrant/.kube
install -o vagrant -g vagrant -m 0600 /etc/kubernetes/admin.conf /home/vagrant/.kube/config

# -- flannel: vxlan over the private network (not Vagrant's NAT interface) --
if ! kubectl get daemonset -n kube-flannel kube-flannel-ds >/dev/null 2>&1; then
  log "flannel $FLANNEL_VERSION"
  work=$(mktemp -d)
  curl -fsSL -o "$work/kube-flannel.yml" \
    "https://github.com/flannel-io/flannel/releases/download/${FLANNEL_VERSION}/kube-flannel.yml"
  iface_regex="^${LAB_NET_PREFIX//./\\.}\\."
  cat > "$work/kustomization.yaml" <<EOF
resources: [kube-flannel.yml]
patches:
  - target: {kind: DaemonSet, name: kube-flannel-ds}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --iface-regex=${iface_regex}
EOF
  kubectl apply -k "$work"
  rm -rf "$work"
fi
kubectl -n kube-flannel rollout status daemonset/kube-flannel-ds --timeout=10m
kubectl wait --for=condition=Ready "node/$node" --timeout=10m

# -- network-policy-api CRDs ----------------------------------------------
# Vendored in deploy/crds (deploy/crds/network-policy-api/SOURCES: tags,
# commits, checksums), so this works offline: ClusterNetworkPolicy
# (v1alpha2) of v0.2.0, AdminNetworkPolicy and BaselineAdminNetworkPolicy
# (v1alpha1) of v0.1.7, one channel. Before the enforcer, so its first list
# finds them (it goes on without a CRD that is missing, and picks it up
# later). Server-side apply: no last-applied annotation on these large
# objects, and a later switch of channel applies cleanly.
case "$CRD_CHANNEL" in
  standard|experimental) ;;
  *) log "CRD_CHANNEL must be standard or experimental, got '$CRD_CHANNEL'"; exit 1 ;;
esac
crds="$REPO/deploy/crds/network-policy-api"
log "network-policy-api CRDs, $CRD_CHANNEL channel: ClusterNetworkPolicy (v0.2.0), AdminNetworkPolicy and BaselineAdminNetworkPolicy (v0.1.7)"
kubectl apply --server-side --force-conflicts -f "$crds/v0.2.0/$CRD_CHANNEL/" -f "$crds/v0.1.7/$CRD_CHANNEL/"
kubectl wait --for condition=Established --timeout=2m \
  crd/clusternetworkpolicies.policy.networking.k8s.io \
  crd/adminnetworkpolicies.policy.networking.k8s.io \
  crd/baselineadminnetworkpolicies.policy.networking.k8s.io

# -- the enforcer image ---------------------------------------------------
# The tag is whatever deploy/kustomization.yaml deploys.
image=$(kubectl kustomize "$REPO/deploy" | awk '$1 == "image:" { print $2; exit }')
[ -n "$image" ] || { log "no image in deploy/"; exit 1; }
apt-get install -y -qq --no-install-recommends buildah >/dev/null
log "building $image with buildah (a few minutes)"
# chroot isolation: RUN steps use the host's network, no CNI involved
# (buildah's own CNI configuration must not meet the cluster's).
buildah bud --isolation chroot --format docker -f "$REPO/deploy/Containerfile" -t "$image" "$REPO"
install -d -m 0755 "$LAB_DIR"
rm -f "$LAB_DIR/join.sh"   # its presence tells the workers everything is ready
rm -f "$LAB_DIR/enforcer-image.tar"
buildah push "$image" "docker-archive:$LAB_DIR/enforcer-image.tar:$image"
ctr -n k8s.io images import "$LAB_DIR/enforcer-image.tar" >/dev/null
printf '%s\n' "$image" > "$LAB_DIR/image"
(cd "$LAB_DIR" && sha256sum enforcer-image.tar > SHA256SUMS)
kubeadm token create --ttl 24h --print-join-command > "$LAB_DIR/join.sh.tmp"
mv "$LAB_DIR/join.sh.tmp" "$LAB_DIR/join.sh"

cat > /etc/systemd/system/enforcer-lab-files.service <<EOF
[Unit]
Description=enforcer lab: join command and enforcer image for the workers
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/bin/python3 -m http.server ${LAB_FILES_PORT} --bind ${NODE_IP} --directory ${LAB_DIR}
Restart=always

[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
systemctl enable --quiet enforcer-lab-files
systemctl restart enforcer-lab-files

# -- the enforcer -----------------------------------------------------------
log "kubectl apply -k deploy/"
kubectl apply -k "$REPO/deploy"
# Here: the control plane's pod. run-conformance.sh waits for every node's.
kubectl -n enforcer-system rollout status daemonset/enforcer --timeout=15m
kubectl -n enforcer-system get pods -o wide
log "done; workers join with http://${NODE_IP}:${LAB_FILES_PORT}/join.sh"
