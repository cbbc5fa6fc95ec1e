#!/usr/bin/env python3
"""Checks that the deployable artifact is what `template.yaml` deploys: an aarch64 Linux ELF that
runs on `provided.al2023`.

Why: the template deploys on arm64 with provided.al2023, whose glibc is 2.34. A bootstrap built
for the wrong machine, or linked against a newer glibc than the runtime has, uploads fine and then
fails at every cold start ("exec format error", or "version `GLIBC_2.xx' not found"), which no test
on the developer's x86_64 build can see. This reads the ELF itself (no binutils needed):

* the header: 64-bit, little-endian, machine aarch64 (EM_AARCH64 = 183), an executable;
* the glibc versions the binary needs (its `.gnu.version_r` section): the newest must be at most
  2.34 (`--max-glibc`);
* with `--zip`: the zip holds exactly one entry `bootstrap`, executable, with the same bytes.

    .venv/bin/python tests/deploy/check_artifact.py target/lambda/etcd-lifecycle-hook/bootstrap \\
        [--zip target/lambda/etcd-lifecycle-hook/bootstrap.zip] [--max-glibc 2.34]

Exit status 0 when it fits, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import stat
import struct
import sys
import zipfile
from dataclasses import dataclass, field

EM_AARCH64 = 183
EM_X86_64 = 62
MACHINES = {EM_AARCH64: "aarch64", EM_X86_64: "x86_64", 3: "i386", 40: "arm", 243: "riscv"}
ET_NAMES = {1: "relocatable", 2: "executable", 3: "shared object (PIE executable)", 4: "core"}
SHT_GNU_VERNEED = 0x6FFFFFFE
PROVIDED_AL2023_GLIBC = (2, 34)


class NotAnElf(ValueError):
    pass


@dataclass
class ElfInfo:
    bits: int
    little_endian: bool
    machine: int
    kind: int
    interpreter: str | None = None
    # library -> version names it needs, e.g. {"libc.so.6": {"GLIBC_2.17", "GLIBC_2.28"}}
    needs: dict[str, set[str]] = field(default_factory=dict)

    @property
    def machine_name(self) -> str:
        return MACHINES.get(self.machine, f"machine {self.machine}")

    def glibc_versions(self) -> list[tuple[int, ...]]:
        versions = set()
        for names in self.needs.values():
            for name in names:
                m = re.fullmatch(r"GLIBC_(\d+(?:\.\d+)+)", name)
                if m:
                    versions.add(tuple(int(p) for p in m.group(1).split(".")))
        return sorted(versions)

    def newest_glibc(self) -> tuple[int, ...] | None:
        versions = self.glibc_versions()
        return versions[-1] if versions else None


def _cstr(data: bytes, offset: int) -> str:
    end = data.index(b"\0", offset)
    return data[offset:end].decode("ascii", "replace")


def parse_elf(data: bytes) -> ElfInfo:
    """The header, the interpreter and the needed symbol versions of an ELF file."""
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise NotAnElf("not an ELF file")
    ei_class, ei_data = data[4], data[5]
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        raise NotAnElf(f"unknown ELF class {ei_class} / data encoding {ei_data}")
    bits = 64 if ei_class == 2 else 32
    e = "<" if ei_data == 1 else ">"
    if bits == 64:
        (kind, machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
         shentsize, shnum, _shstrndx) = struct.unpack_from(e + "HHIQQQIHHHHHH", data, 16)
    else:
        (kind, machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
         shentsize, shnum, _shstrndx) = struct.unpack_from(e + "HHIIIIIHHHHHH", data, 16)
    info = ElfInfo(bits=bits, little_endian=ei_data == 1, machine=machine, kind=kind)

    for i in range(phnum):
        at = phoff + i * phentsize
        if bits == 64:
            p_type, _f, p_offset, _va, _pa, p_filesz = struct.unpack_from(e + "IIQQQQ", data, at)
        else:
            p_type, p_offset, _va, _pa, p_filesz = struct.unpack_from(e + "IIIII", data, at)
        if p_type == 3:  # PT_INTERP
            info.interpreter = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode("ascii", "replace")

    sections = []
    for i in range(shnum):
        at = shoff + i * shentsize
        if bits == 64:
            _name, sh_type, _fl, _addr, sh_offset, sh_size, sh_link, sh_info = struct.unpack_from(
                e + "IIQQQQII", data, at
            )
        else:
            _name, sh_type, _fl, _addr, sh_offset, sh_size, sh_link, sh_info = struct.unpack_from(
                e + "IIIIIIII", data, at
            )
        sections.append((sh_type, sh_offset, sh_size, sh_link, sh_info))

    for sh_type, sh_offset, _size, sh_link, sh_info in sections:
        if sh_type != SHT_GNU_VERNEED:
            continue
        strtab = sections[sh_link][1]
        at = sh_offset
        for _ in range(sh_info):  # Elf_Verneed entries
            _vn_version, vn_cnt, vn_file, vn_aux, vn_next = struct.unpack_from(e + "HHIII", data, at)
            library = _cstr(data, strtab + vn_file)
            aux = at + vn_aux
            for _ in range(vn_cnt):  # Elf_Vernaux entries
                _hash, _flags, _other, vna_name, vna_next = struct.unpack_from(e + "IHHII", data, aux)
                info.needs.setdefault(library, set()).add(_cstr(data, strtab + vna_name))
                if not vna_next:
                    break
                aux += vna_next
            if not vn_next:
                break
            at += vn_next
    return info


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def _dotted(version: tuple[int, ...] | None) -> str:
    return "none" if version is None else ".".join(map(str, version))


def check_binary(data: bytes, max_glibc: tuple[int, ...] = PROVIDED_AL2023_GLIBC) -> tuple[ElfInfo | None, list[str]]:
    try:
        info = parse_elf(data)
    except (NotAnElf, struct.error, ValueError, IndexError) as e:
        return None, [f"not a usable ELF file: {e}"]
    problems = []
    if info.machine != EM_AARCH64:
        problems.append(f"built for {info.machine_name}, not aarch64: the template deploys on arm64")
    if info.bits != 64 or not info.little_endian:
        problems.append(f"{info.bits}-bit {'little' if info.little_endian else 'big'}-endian, not 64-bit little-endian")
    if info.kind not in (2, 3):
        problems.append(f"an ELF {ET_NAMES.get(info.kind, info.kind)}, not an executable")
    newest = info.newest_glibc()
    if newest is not None and newest > max_glibc:
        problems.append(
            f"needs glibc {_dotted(newest)}, newer than {_dotted(max_glibc)} "
            "(provided.al2023's): it would fail at start-up"
        )
    return info, problems


def check_zip(path: str, binary: bytes) -> list[str]:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        return [f"{path}: not a zip file: {e}"]
    with archive:
        names = archive.namelist()
        if names != ["bootstrap"]:
            return [f"{path}: holds {names}, expected exactly ['bootstrap']"]
        entry = archive.getinfo("bootstrap")
        problems = []
        mode = entry.external_attr >> 16
        if not mode & stat.S_IXUSR:
            problems.append(f"{path}: bootstrap is not executable (mode {oct(mode)})")
        if hashlib.sha256(archive.read(entry)).digest() != hashlib.sha256(binary).digest():
            problems.append(f"{path}: its bootstrap differs from the binary checked")
        return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Check the arm64 Lambda artifact.")
    p.add_argument("bootstrap")
    p.add_argument("--zip", help="the zip `cargo lambda deploy` and the console take")
    p.add_argument("--max-glibc", default="2.34", type=_version)
    args = p.parse_args(argv)
    try:
        with open(args.bootstrap, "rb") as f:
            data = f.read()
    except OSError as e:
        print(f"check_artifact: {e}", file=sys.stderr)
        return 1
    info, problems = check_binary(data, args.max_glibc)
    if args.zip:
        problems += check_zip(args.zip, data)
    if problems:
        for problem in problems:
            print(f"check_artifact: {args.bootstrap}: {problem}", file=sys.stderr)
        return 1
    assert info is not None
    print(
        f"check_artifact: ok: {args.bootstrap}: {info.machine_name} ELF, {len(data) / 1e6:.1f} MB, "
        f"newest glibc symbol {_dotted(info.newest_glibc())} (at most {_dotted(args.max_glibc)}), "
        f"interpreter {info.interpreter}" + (f"; {args.zip} holds it" if args.zip else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
