"""The artifact check reads what it claims to read (machine, needed glibc versions, the zip) and
refuses each kind of wrong artifact: another machine, a glibc newer than provided.al2023's, a zip
without an executable `bootstrap`."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
import zipfile

from tests.deploy import check_artifact

HERE = os.path.dirname(os.path.abspath(__file__))


def make_elf(machine: int, needs: dict[str, list[str]], kind: int = 3) -> bytes:
    """A minimal 64-bit little-endian ELF: a header, a .dynstr and a .gnu.version_r section."""
    strtab = bytearray(b"\0")

    def string(s: str) -> int:
        at = len(strtab)
        strtab.extend(s.encode() + b"\0")
        return at

    verneed = bytearray()
    entries = list(needs.items())
    for i, (library, versions) in enumerate(entries):
        file_at = string(library)
        aux = bytearray()
        for j, version in enumerate(versions):
            nxt = 16 if j < len(versions) - 1 else 0
            aux += struct.pack("<IHHII", 0, 0, 2 + j, string(version), nxt)
        nxt = 16 + len(aux) if i < len(entries) - 1 else 0
        verneed += struct.pack("<HHIII", 1, len(versions), file_at, 16, nxt) + aux

    header_size, shentsize = 64, 64
    dynstr_at = header_size
    verneed_at = dynstr_at + len(strtab)
    shoff = verneed_at + len(verneed)
    sections = [
        struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        struct.pack("<IIQQQQIIQQ", 0, 3, 0, 0, dynstr_at, len(strtab), 0, 0, 1, 0),
        struct.pack(
            "<IIQQQQIIQQ", 0, check_artifact.SHT_GNU_VERNEED, 0, 0, verneed_at, len(verneed), 1,
            len(entries), 4, 0,
        ),
    ]
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", kind, machine, 1, 0, 0, shoff, 0, header_size, 56, 0, shentsize,
        len(sections), 0,
    )
    return header + bytes(strtab) + bytes(verneed) + b"".join(sections)


class ParseTest(unittest.TestCase):
    def test_machine_and_needed_versions(self):
        data = make_elf(
            check_artifact.EM_AARCH64,
            {"libc.so.6": ["GLIBC_2.17", "GLIBC_2.28", "GLIBC_PRIVATE"], "libgcc_s.so.1": ["GCC_4.2.0"]},
        )
        info = check_artifact.parse_elf(data)
        self.assertEqual(info.machine_name, "aarch64")
        self.assertEqual(info.needs["libc.so.6"], {"GLIBC_2.17", "GLIBC_2.28", "GLIBC_PRIVATE"})
        self.assertEqual(info.needs["libgcc_s.so.1"], {"GCC_4.2.0"})
        self.assertEqual(info.newest_glibc(), (2, 28))

    def test_versions_compare_as_numbers(self):
        info = check_artifact.parse_elf(
            make_elf(check_artifact.EM_AARCH64, {"libc.so.6": ["GLIBC_2.9", "GLIBC_2.17", "GLIBC_2.3.4"]})
        )
        self.assertEqual(info.newest_glibc(), (2, 17))

    @unittest.skipUnless(shutil.which("readelf"), "readelf (binutils) is not installed")
    def test_agrees_with_readelf_on_a_real_binary(self):
        binary = shutil.which("ls") or "/bin/ls"
        out = subprocess.run(
            ["readelf", "--version-info", "--wide", binary], capture_output=True, text=True, check=True
        ).stdout
        section = out.split(".gnu.version_r", 1)[1]
        expected = set()
        for line in section.splitlines():
            if "Name: GLIBC_" in line:
                expected.add(line.split("Name: ", 1)[1].split()[0])
        with open(binary, "rb") as f:
            info = check_artifact.parse_elf(f.read())
        found = {v for names in info.needs.values() for v in names if v.startswith("GLIBC_")}
        self.assertEqual(found, expected)
        self.assertTrue(info.interpreter and info.interpreter.startswith("/lib"), info.interpreter)


class CheckTest(unittest.TestCase):
    def test_an_arm64_binary_for_al2023_passes(self):
        data = make_elf(check_artifact.EM_AARCH64, {"libc.so.6": ["GLIBC_2.17", "GLIBC_2.30"]})
        info, problems = check_artifact.check_binary(data)
        self.assertEqual(problems, [])
        self.assertEqual(info.newest_glibc(), (2, 30))

    def test_an_x86_64_binary_fails(self):
        _, problems = check_artifact.check_binary(
            make_elf(check_artifact.EM_X86_64, {"libc.so.6": ["GLIBC_2.17"]})
        )
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("built for x86_64, not aarch64", problems[0])

    def test_a_glibc_newer_than_the_runtime_fails(self):
        _, problems = check_artifact.check_binary(
            make_elf(check_artifact.EM_AARCH64, {"libc.so.6": ["GLIBC_2.17", "GLIBC_2.35"]})
        )
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("needs glibc 2.35, newer than 2.34", problems[0])
        _, problems = check_artifact.check_binary(
            make_elf(check_artifact.EM_AARCH64, {"libc.so.6": ["GLIBC_2.34"]})
        )
        self.assertEqual(problems, [], "2.34 itself is provided.al2023's glibc")

    def test_not_an_elf_fails(self):
        _, problems = check_artifact.check_binary(b"#!/bin/sh\necho hello\n")
        self.assertEqual(len(problems), 1)
        self.assertIn("not a usable ELF file", problems[0])


class ZipAndCommandLineTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.data = make_elf(check_artifact.EM_AARCH64, {"libc.so.6": ["GLIBC_2.17"]})
        self.bootstrap = os.path.join(self.tmp.name, "bootstrap")
        with open(self.bootstrap, "wb") as f:
            f.write(self.data)

    def zip(self, name="bootstrap", data=None, mode=0o755) -> str:
        path = os.path.join(self.tmp.name, "bootstrap.zip")
        with zipfile.ZipFile(path, "w") as z:
            entry = zipfile.ZipInfo(name)
            entry.external_attr = mode << 16
            z.writestr(entry, self.data if data is None else data)
        return path

    def run_check(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, os.path.join(HERE, "check_artifact.py"), self.bootstrap, *args],
            capture_output=True,
            text=True,
        )

    def test_a_good_zip_passes(self):
        run = self.run_check("--zip", self.zip())
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn("aarch64 ELF", run.stdout)
        self.assertIn("newest glibc symbol 2.17", run.stdout)

    def test_zip_problems_are_named(self):
        self.assertIn("expected exactly ['bootstrap']", self.run_check("--zip", self.zip("main")).stderr)
        self.assertIn("not executable", self.run_check("--zip", self.zip(mode=0o644)).stderr)
        differs = self.run_check("--zip", self.zip(data=self.data + b"\0"))
        self.assertEqual(differs.returncode, 1)
        self.assertIn("differs from the binary", differs.stderr)

    def test_the_limit_is_configurable(self):
        run = self.run_check("--max-glibc", "2.12")
        self.assertEqual(run.returncode, 1)
        self.assertIn("needs glibc 2.17, newer than 2.12", run.stderr)


if __name__ == "__main__":
    unittest.main()
