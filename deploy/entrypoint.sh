#!/usr/bin/env bash
# Entrypoint of the enforcer image (deploy/Containerfile, deploy/daemonset.yaml).
#
#   enforcer-entrypoint [ENFORCER_RUN_ARGS...]
#       1. bpffs at /sys/fs/bpf: must be the host's (pins outlive the
#          container only there); mounted here only if absent and allowed;
#       2. kernel headers for bcc at /lib/modules/$(uname -r)/{build,source}:
#          the host's, mounted read-only under /host; if the host has none,
#          Debian's linux-headers-<arch>, downloaded once per pod into a
#          cache volume and linked the way scripts/setup.sh links them;
#       3. exec enforcer run --source kubernetes --node "$NODE_NAME" ARGS...
#
#   enforcer-entrypoint mount-bpffs
#       step 1 only, then exit: the privileged initContainer, whose mount
#       propagates to the host (mountPropagation: Bidirectional).
#
# Every path can be moved with an environment variable (the tests run this
# script against a scratch directory with stub commands).
set -euo pipefail

BPFFS=${ENFORCER_BPFFS:-/sys/fs/bpf}
MOUNTS=${ENFORCER_MOUNTS:-/proc/self/mounts}
HOST_ROOT=${ENFORCER_HOST_ROOT:-/host}
MODULES_DIR=${ENFORCER_MODULES_DIR:-/lib/modules}
SRC_DIR=${ENFORCER_SRC_DIR:-/usr/src}
HEADERS_CACHE=${ENFORCER_HEADERS_CACHE:-/var/cache/enforcer/headers}
ENFORCER=${ENFORCER_BIN:-enforcer}

log() { printf 'entrypoint: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The type of the last mount on $1 (fields: device, mount point, type, ...).
is_bpffs() {
  awk -v p="$1" '$2 == p { t = $3 } END { exit !(t == "bpf") }' "$MOUNTS"
}

ensure_bpffs() {
  if is_bpffs "$BPFFS"; then
    return 0
  fi
  log "$BPFFS is not a bpffs; mounting one"
  mkdir -p "$BPFFS"
  if mount -t bpf bpf "$BPFFS" && is_bpffs "$BPFFS"; then
    log "mounted bpffs on $BPFFS"
    return 0
  fi
  die "no bpffs at $BPFFS and none can be mounted here (that needs CAP_SYS_ADMIN)." \
      "The DaemonSet's mount-bpffs initContainer mounts it on the host, and systemd" \
      "does at boot; pins must live on the host's bpffs to survive a restart."
}

kver=$(uname -r)
mod=$MODULES_DIR/$kver

# What bcc looks for (src/cc/frontends/clang/loader.cc): with both build/
# and source/ present it compiles in source/, else in build/; either way
# it needs include/linux/kconfig.h there, and the generated config in build/.
headers_ready() {
  local k=$mod/build
  if [ -d "$mod/build" ] && [ -d "$mod/source" ]; then
    k=$mod/source
  fi
  [ -f "$k/include/linux/kconfig.h" ] && [ -f "$mod/build/include/generated/autoconf.h" ]
}

# The host's /lib/modules and /usr/src are mounted read-only under
# $HOST_ROOT (not at their own paths, so that this container's
# /lib/modules stays writable for the fallback). Recreate the host's
# build/source links here, pointing into $HOST_ROOT, and expose the host's
# /usr/src entries at /usr/src so absolute links inside header trees
# resolve as they do on the host.
link_host_headers() {
  local host_mod=$HOST_ROOT/lib/modules/$kver entry target name d
  if [ -d "$HOST_ROOT/usr/src" ]; then
    mkdir -p "$SRC_DIR"
    for d in "$HOST_ROOT"/usr/src/*; do
      [ -e "$d" ] || continue
      name=${d##*/}
      [ -e "$SRC_DIR/$name" ] || [ -L "$SRC_DIR/$name" ] || ln -s "$d" "$SRC_DIR/$name"
    done
  fi
  for name in build source; do
    entry=$host_mod/$name
    if [ -L "$entry" ]; then
      target=$(readlink "$entry")
      case $target in
        /*) target=$HOST_ROOT$target ;;
        *) target=$host_mod/$target ;;
      esac
    elif [ -d "$entry" ]; then
      target=$entry
    else
      continue
    fi
    mkdir -p "$mod"
    ln -sfn "$target" "$mod/$name"
  done
}

# The newest of the given paths that is a directory (empty if none is).
newest_dir() {
  local d
  for d in "$@"; do
    if [ -d "$d" ]; then
      printf '%s\n' "$d"
    fi
  done | sort -V | tail -n 1
}

# Fallback: Debian's generic headers (tc programs need only UAPI and stable
# layouts, see README.md). Only the two header packages are unpacked, not
# installed: linux-headers-<abi>-<arch> depends on gcc, which bcc does not
# use. The cache is an emptyDir, so a restarted container finds them.
install_debian_headers() {
  local arch meta pkg common tmp deb arch_dir common_dir
  arch=$(dpkg --print-architecture)
  meta=linux-headers-$arch
  arch_dir=$(newest_dir "$HEADERS_CACHE"/usr/src/linux-headers-*-"$arch")
  common_dir=$(newest_dir "$HEADERS_CACHE"/usr/src/linux-headers-*-common)
  if [ -z "$arch_dir" ] || [ -z "$common_dir" ]; then
    log "no kernel headers for $kver on the host; fetching Debian's $meta into $HEADERS_CACHE"
    apt-get update -qq || die "apt-get update failed: the node needs to reach a Debian mirror for the header fallback"
    pkg=$(apt-cache depends "$meta" | awk '$1 == "Depends:" && $2 ~ /^linux-headers-/ { print $2; exit }')
    [ -n "$pkg" ] || die "cannot resolve $meta to a versioned headers package"
    common=$(apt-cache depends "$pkg" | awk '$1 == "Depends:" && $2 ~ /^linux-headers-.*-common/ { print $2; exit }')
    [ -n "$common" ] || die "cannot find the common headers package of $pkg"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq "$pkg" "$common") || die "apt-get download $pkg $common failed"
    mkdir -p "$HEADERS_CACHE"
    for deb in "$tmp"/*.deb; do
      dpkg-deb -x "$deb" "$HEADERS_CACHE"
    done
    rm -rf "$tmp"
    arch_dir=$(newest_dir "$HEADERS_CACHE"/usr/src/linux-headers-*-"$arch")
    common_dir=$(newest_dir "$HEADERS_CACHE"/usr/src/linux-headers-*-common)
    if [ -z "$arch_dir" ] || [ -z "$common_dir" ]; then
      die "unpacked $pkg and $common but found no headers under $HEADERS_CACHE/usr/src"
    fi
  fi
  mkdir -p "$mod"
  ln -sfn "$arch_dir" "$mod/build"
  ln -sfn "$common_dir" "$mod/source"
  log "linked $mod/build -> $arch_dir, $mod/source -> $common_dir"
}

ensure_headers() {
  link_host_headers
  if headers_ready; then
    log "using the host's kernel headers for $kver"
    return 0
  fi
  install_debian_headers
  headers_ready || die "kernel headers for $kver still incomplete under $mod"
}

if [ "${1:-}" = mount-bpffs ]; then
  ensure_bpffs
  exit 0
fi

[ -n "${NODE_NAME:-}" ] || die "NODE_NAME is not set (the DaemonSet sets it from the downward API, spec.nodeName)"
ensure_bpffs
ensure_headers
log "exec $ENFORCER run --source kubernetes --node $NODE_NAME $*"
exec "$ENFORCER" run --source kubernetes --node "$NODE_NAME" "$@"
