#!/usr/bin/env bash
# Cold start and peak memory of the arm64 artifact (`make package`) under qemu-user, next to the
# x86_64 release build, interleaved by bench/coldstart.py under the same Runtime API emulator.
# Emulated: qemu translates every aarch64 instruction on this x86_64 machine, so the figure says
# the artifact starts and answers, and bounds its start-up work; it is not a Graviton figure.
# VmHWM is qemu's, the translated code and the guest's memory together.
#
#   bash bench/coldstart_arm64.sh          (or: make bench-arm64)
#   RUNS=10 bash bench/coldstart_arm64.sh
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
arm64=$PWD/$target/lambda/etcd-lifecycle-hook/bootstrap
x86_64=$PWD/$target/release/etcd-lifecycle-hook
for f in "$arm64" "$x86_64"; do
  [ -x "$f" ] || { echo "missing $f: run make package release" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
wrapper=$(.venv/bin/python -c 'import sys; from tests.deploy import qemu; print(qemu.wrapper(sys.argv[1], sys.argv[2]))' "$arm64" "$tmp")
cd bench
../.venv/bin/python coldstart.py --runs "${RUNS:-20}" \
  --variant "arm64-qemu=$wrapper" --variant "x86_64=$x86_64"
