#!/usr/bin/env bash
# Installs what a fresh machine lacks to build, test and demo the project:
#   - Debian packages: etcd (server and etcdctl) for the real test clusters, protoc and the
#     protobuf well-known types for etcd-client's build script;
#   - cargo-deny, for the dependency policy in deny.toml;
#   - a Python venv (.venv) with moto's server for the local Auto Scaling / EC2 stack.
# Idempotent and quiet when everything is already there. Called by `make` and `.ci/run`.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else
    log "need root (or passwordless sudo) to run: $*"; exit 1
  fi
}

need_apt=()
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/tmp/setup-apt.log 2>&1; then
    as_root apt-get update -q >>/tmp/setup-apt.log 2>&1
    as_root apt-get install -y -q --no-install-recommends "${need_apt[@]}" >>/tmp/setup-apt.log 2>&1 \
      || { cat /tmp/setup-apt.log >&2; log "apt-get install failed"; exit 1; }
  fi
fi

# cargo-deny checks licenses, bans and sources of the dependency tree (`make lint`).
if ! command -v cargo-deny >/dev/null; then
  log "installing cargo-deny (crates.io, about 3 minutes on two cores)"
  cargo install --locked --quiet cargo-deny@0.20.2
fi

stamp=.venv/.requirements.sha256
want=$(sha256sum requirements-dev.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "creating .venv with $(python3 --version)"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$want" > "$stamp"
fi
