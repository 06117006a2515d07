#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian (bookworm) machine, run as root:
#   Debian packages, kernel-headers links bcc needs, bpffs, the project venv.
# Every step checks before it acts, so re-running costs a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "setup: run as root (loading BPF programs needs it)" >&2; exit 1; }

APT_PACKAGES=(python3-bpfcc python3-venv python3-pip iproute2 iptables
              linux-headers-amd64 kmod ethtool
              # tests/datapath/test_reasons.py: reasons.h read by a C compiler
              gcc
              # tests/deploy: shellcheck for deploy/ scripts; vagrant (+ its
              # libvirt provider, ~10 MB more) for `vagrant validate` of the lab
              shellcheck vagrant vagrant-libvirt
              # bench/traffic_bench.py: real traffic beside kube-router-style
              # iptables+ipset and nftables renderings of the same policies
              iperf3 ipset nftables conntrack)
# tests/deploy: `kubectl kustomize deploy/`. Debian ships kubectl as
# kubernetes-client; a kubectl already installed from another package
# (Kubernetes' or Google Cloud's apt repository) does as well, and would
# conflict with it over /usr/bin/kubectl.
command -v kubectl >/dev/null 2>&1 || APT_PACKAGES+=(kubernetes-client)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bcc compiles against /lib/modules/$(uname -r)/build. When the running
# kernel ships no headers (a cloud or VM kernel), point build/source at
# Debian's generic headers: tc programs only need UAPI and stable layouts.
kver=$(uname -r)
moddir=/lib/modules/$kver
if [ ! -e "$moddir/build/include/linux/kconfig.h" ] && [ ! -e "$moddir/build/include/generated/autoconf.h" ]; then
  arch_dir=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  common_dir=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
  [ -n "$arch_dir" ] && [ -n "$common_dir" ] || { echo "setup: no linux-headers under /usr/src" >&2; exit 1; }
  mkdir -p "$moddir"
  ln -sfn "$arch_dir" "$moddir/build"
  ln -sfn "$common_dir" "$moddir/source"
  echo "setup: linked $moddir/build -> $arch_dir"
fi

mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

# The venv sees Debian's bcc module (python3-bpfcc) through system site
# packages; PyPI's "bcc" is an unrelated project and must never be installed.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.installed
# Reinstall when the metadata or the protos changed, or generated code is gone.
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
   || [ -n "$(find proto -name '*.proto' -newer "$stamp")" ] || [ ! -f enforcer/v1/enforcer_pb2.py ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
.venv/bin/python -c 'import bcc, pyroute2, enforcer' || { echo "setup: venv imports failed" >&2; exit 1; }
echo "setup: ok"
