#!/usr/bin/env bash
# Everything the benches need beyond scripts/setup.sh: the release binary and the echo floor,
# copied to a private directory (others may rebuild target/ while a bench runs), and .venv-bench
# with the Python baseline's packages (requirements-bench.txt).
#
#   bash bench/setup.sh        prints the directory holding `bootstrap` and `floor`
#
# A target directory shared by several checkouts of this repository can hold a binary another
# checkout built more recently than this one's sources changed, and cargo then calls it fresh:
# build this checkout's binary first (touch its sources) or pass it as BOOTSTRAP.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'bench setup: %s\n' "$*" >&2; }

bash scripts/setup.sh

# strace counts the function's connections to etcd (bench/warm.py --connections).
if ! command -v strace >/dev/null; then
  log "installing strace"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo -n"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_ apt-get install -y -q --no-install-recommends strace >&2 \
    || { $sudo_ apt-get update -q >&2 && $sudo_ apt-get install -y -q --no-install-recommends strace >&2; }
fi

target=${CARGO_TARGET_DIR:-target}
bin=${BENCH_BIN_DIR:-.bench-bin}
mkdir -p "$bin"
# Two builds, never one: an example also gets the dev-dependencies, and their features (the SDK's
# test-util, more of tokio) would be unified into the function's binary if built together.
# BOOTSTRAP=path measures that binary instead (as in tests/stack), e.g. one built elsewhere.
if [ -n "${BOOTSTRAP:-}" ]; then
  cp "$BOOTSTRAP" "$bin/bootstrap"
else
  log "building the release binary"
  cargo build --release --locked --bin etcd-lifecycle-hook >&2
  cp "$target/release/etcd-lifecycle-hook" "$bin/bootstrap"
fi
log "building the floor (bench/floor.rs)"
cargo build --release --locked --example floor >&2
cp "$target/release/examples/floor" "$bin/floor"

stamp=.venv-bench/.requirements.sha256
want=$(sha256sum requirements-bench.txt | cut -d' ' -f1)
if [ ! -x .venv-bench/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # The baseline is Python 3.11 (the Lambda runtime users would pick); any python3 if it is absent.
  py=$(command -v python3.11 || command -v python3)
  log "creating .venv-bench with $($py --version)"
  "$py" -m venv .venv-bench
  .venv-bench/bin/pip install -q --disable-pip-version-check -r requirements-bench.txt
  echo "$want" > "$stamp"
fi
echo "$bin"
