#!/usr/bin/env bash
# Every lab node (Vagrantfile): containerd from Debian, kubeadm/kubelet/kubectl
# from the Kubernetes project's apt repository, the kernel settings kubeadm
# and flannel need. Idempotent: `vagrant provision` re-runs it safely.
#
# Environment (set by the Vagrantfile): NODE_IP, K8S_MINOR (e.g. v1.31),
# HOST_HEADERS (yes: install the running kernel's headers, so the enforcer
# uses the host's; no: leave them out, so it takes its Debian fallback).
set -euo pipefail

: "${NODE_IP:?}" "${K8S_MINOR:?}"
HOST_HEADERS=${HOST_HEADERS:-yes}
export DEBIAN_FRONTEND=noninteractive

log() { printf '[common %s] %s\n' "$(hostname -s)" "$*"; }

# kubelet refuses to run with swap on.
swapoff -a
sed -i -E '/^[^#].*\sswap\s/ s/^/#/' /etc/fstab

# overlay: containerd's snapshotter. br_netfilter + the sysctls: kube-proxy
# sees bridged pod traffic (flannel's cni0). sctp: the SCTP conformance cases.
cat > /etc/modules-load.d/enforcer-lab.conf <<'EOF'
overlay
br_netfilter
sctp
EOF
for m in overlay br_netfilter sctp; do
  modprobe "$m" || log "cannot load module $m"
done
cat > /etc/sysctl.d/90-enforcer-lab.conf <<'EOF'
net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
EOF
sysctl --quiet --system

apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  containerd curl gpg ca-certificates conntrack socat ethtool iptables iproute2 python3 >/dev/null

# Kubernetes packages, one minor version, held.
keyring=/etc/apt/keyrings/kubernetes-apt-keyring.gpg
repo="https://pkgs.k8s.io/core:/stable:/${K8S_MINOR}/deb/"
if [ ! -s "$keyring" ] || ! grep -qF "$repo" /etc/apt/sources.list.d/kubernetes.list 2>/dev/null; then
  install -d -m 0755 /etc/apt/keyrings
  curl -fsSL "${repo}Release.key" | gpg --dearmor --yes -o "$keyring"
  echo "deb [signed-by=$keyring] $repo /" > /etc/apt/sources.list.d/kubernetes.list
  apt-get update -qq
fi
apt-get install -y -qq --no-install-recommends kubelet kubeadm kubectl >/dev/null
apt-mark hold kubelet kubeadm kubectl >/dev/null

# containerd: systemd cgroups (kubelet's default driver) and kubeadm's pause image.
pause=$(kubeadm config images list --kubernetes-version "$(kubeadm version -o short)" 2>/dev/null | grep /pause: || true)
mkdir -p /etc/containerd
containerd config default > /etc/containerd/config.toml
sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' /etc/containerd/config.toml
if [ -n "$pause" ]; then
  sed -i -E "s|^(\s*sandbox_image = ).*|\1\"$pause\"|" /etc/containerd/config.toml
fi
systemctl restart containerd
systemctl enable --quiet containerd

# Two interfaces: Vagrant's NAT (the default route, the same address on
# every node) and the private network. Kubernetes must use the latter.
echo "KUBELET_EXTRA_ARGS=--node-ip=$NODE_IP" > /etc/default/kubelet
systemctl enable --quiet kubelet

if [ "$HOST_HEADERS" = yes ]; then
  if apt-get install -y -qq --no-install-recommends "linux-headers-$(uname -r)" >/dev/null 2>&1; then
    log "installed linux-headers-$(uname -r): the enforcer will use the host's headers"
  else
    log "linux-headers-$(uname -r) is not in the archive: the enforcer will fall back to Debian's generic headers"
  fi
else
  log "no host kernel headers on purpose: the enforcer's entrypoint fetches Debian's"
fi

# bpffs: systemd mounts it at boot; the DaemonSet's initContainer covers hosts that do not.
mountpoint -q /sys/fs/bpf && log "bpffs is mounted on /sys/fs/bpf"
log "done"
