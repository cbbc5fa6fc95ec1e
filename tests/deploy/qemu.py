"""Running the arm64 bootstrap on this x86_64 machine: Debian's qemu-user-static with the arm64
glibc of libc6-arm64-cross as its sysroot.

binfmt_misc is not mounted on these machines (and mounting it would change the host for every
process), so the binary is not executable by itself: `wrapper()` writes a small script that `exec`s
qemu with the binary. Everything that spawns a function binary by path (the e2e stack's
`BOOTSTRAP`, bench/coldstart.py's `--variant`) can then take the arm64 artifact unchanged, and
because of `exec` the process it signals and measures is qemu running the function itself.
"""

from __future__ import annotations

import os
import shlex
import shutil

QEMU = "qemu-aarch64-static"
SYSROOT = "/usr/aarch64-linux-gnu"
SETUP_HINT = "run `bash scripts/setup.sh deploy` (Debian: qemu-user-static, libc6-arm64-cross)"


def missing() -> list[str]:
    """What is missing to run an aarch64 binary here (empty when all is there)."""
    problems = []
    if not shutil.which(QEMU):
        problems.append(f"{QEMU} is not installed")
    if not os.path.exists(os.path.join(SYSROOT, "lib", "ld-linux-aarch64.so.1")):
        problems.append(f"no arm64 glibc under {SYSROOT}")
    return problems


def wrapper(binary: str, directory: str, name: str = "bootstrap-arm64-qemu") -> str:
    """An executable script in `directory` that runs `binary` under qemu-user; its path."""
    qemu = shutil.which(QEMU) or QEMU
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(
            "#!/bin/sh\n"
            "# The arm64 bootstrap under qemu-user (written by tests/deploy/qemu.py).\n"
            f"exec {shlex.quote(qemu)} -L {shlex.quote(SYSROOT)} {shlex.quote(os.path.abspath(binary))} \"$@\"\n"
        )
    os.chmod(path, 0o755)
    return path
