"""The emulated 64-bit ARM userland of ``make arm64`` (:mod:`arm64_check` runs the device path in it).

A Debian bookworm arm64 root, the base of Raspberry Pi OS 64-bit, built once (cached, outside the
repository) with ``debootstrap --arch=arm64 --foreign`` and its second stage run through qemu-user-static,
the kit's ``edge`` and ``finetune`` extras installed there from their aarch64 wheels; commands run in it
with ``chroot`` under ``QEMU_CPU`` and an ARM /proc/cpuinfo (``cpuinfo_text``) bind-mounted: qemu-user
shows the host's x86 one, and LiteRT then crashes or runs without XNNPACK.

Needs root (debootstrap, chroot, mounts) and, the first time, the network (Debian's packages, PyPI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = Path("~/.cache/edge-asd/arm64-root").expanduser()
MIRROR = "http://deb.debian.org/debian"
HOST_TOOLS = {"qemu-aarch64-static": "qemu-user-static", "debootstrap": "debootstrap", "update-binfmts": "binfmt-support"}
DEBOOTSTRAP_DONE = ".edge-asd-debootstrap-done"   # in the root: both stages finished
DEPS_DONE = ".edge-asd-deps-done"                 # in the root: the extras' dependencies installed
VENV = "/opt/edge-asd/venv"                       # inside the root
SRC = "/opt/edge-asd/src"
PINNED = ["numpy", "ai-edge-litert", "soxr", "soundfile", "flatbuffers", "click", "platformdirs"]
HWCAP_BITS = {"atomics": 8, "asimddp": 20, "sve": 22}   # arm64 AT_HWCAP bits (Linux arch/arm64/include/uapi/asm/hwcap.h)
CORES = 4             # a Pi 4 or 5

# /proc/cpuinfo of one core as an arm64 Linux kernel prints it (arch/arm64/kernel/cpuinfo.c); the values are
# those of the Raspberry Pi 4 (BCM2711, Cortex-A72 r0p3) and Pi 5 (BCM2712, Cortex-A76 r4p1) kernels.
CPUS = {
    "cortex-a72": {"part": "0xd08", "variant": "0x0", "revision": 3, "features": "fp asimd evtstrm crc32 cpuid"},
    "cortex-a76": {"part": "0xd0b", "variant": "0x4", "revision": 1,
                   "features": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                               "lrcpc dcpop asimddp"},
}

def cpuinfo_text(cpu: str, cores: int = 4) -> str:
    """An arm64 /proc/cpuinfo for ``cores`` cores of ``cpu`` (a key of CPUS), as the Pi's kernel prints it.

    Raises:
        ValueError: ``cpu`` is not in CPUS.
    """
    if cpu not in CPUS:
        raise ValueError(f"unknown cpu {cpu!r}; known: {', '.join(CPUS)}")
    c = CPUS[cpu]
    block = (f"BogoMIPS\t: 108.00\nFeatures\t: {c['features']}\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
             f"CPU variant\t: {c['variant']}\nCPU part\t: {c['part']}\nCPU revision\t: {c['revision']}\n")
    return "".join(f"processor\t: {i}\n{block}\n" for i in range(cores))


def run(cmd, **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    return subprocess.run(list(map(str, cmd)), check=True, **kw)


def ensure_host_tools() -> None:
    """qemu-user-static, debootstrap and binfmt-support, installed with apt when missing (said so)."""
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        print(f"installing with apt-get: {' '.join(missing)}", file=sys.stderr)
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "install", "-y", "-qq", *missing], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_binfmt() -> None:
    """The kernel runs aarch64 ELF files through qemu (binfmt_misc, 'F' flag: no copy in the root needed).

    Raises:
        SystemExit: binfmt_misc cannot be mounted or the qemu-aarch64 entry cannot be enabled.
    """
    fs = Path("/proc/sys/fs/binfmt_misc")
    if not (fs / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(fs)])
    entry = fs / "qemu-aarch64"
    if not entry.exists() or "enabled" not in entry.read_text():
        run(["update-binfmts", "--enable", "qemu-aarch64"])
    if not entry.exists() or "enabled" not in entry.read_text():
        sys.exit(f"binfmt_misc has no enabled qemu-aarch64 entry ({entry})")


def build_root(root: Path) -> None:
    """debootstrap bookworm arm64 into ``root`` (both stages; ~7 min under emulation), once."""
    if (root / DEBOOTSTRAP_DONE).exists():
        return
    if root.exists():
        shutil.rmtree(root)   # a run cut short: start again
    root.parent.mkdir(parents=True, exist_ok=True)
    run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase",
         "--include=python3,python3-venv,ca-certificates", "bookworm", root, MIRROR])
    run(["chroot", root, "/debootstrap/debootstrap", "--second-stage"])
    (root / DEBOOTSTRAP_DONE).touch()


def chroot(root: Path, cpu: str, argv: list[str], binds: dict[Path, str], timeout: float = 3600) -> subprocess.CompletedProcess:
    """Run ``argv`` in the root under qemu (QEMU_CPU=cpu), with the ARM cpuinfo over /proc/cpuinfo, a /sys
    holding only the CPU lists (/sys/devices/system/cpu/{possible,present,online}: without them LiteRT's cpuinfo
    gives up and XNNPACK is not used; the host's /sys makes it crash) and ``binds`` (host path -> path in the
    root) mounted, in a private mount namespace (gone when it ends)."""
    info = root / "etc" / "edge-asd-cpuinfo"
    info.write_text(cpuinfo_text(cpu, CORES))
    cpus = root / "etc" / "edge-asd-sys" / "devices" / "system" / "cpu"
    cpus.mkdir(parents=True, exist_ok=True)
    for name in ("possible", "present", "online"):
        (cpus / name).write_text(f"0-{CORES - 1}\n")
    mounts = [f"mount -t proc proc {root}/proc", f"mount --bind {info} {root}/proc/cpuinfo",
              f"mount --bind {root}/etc/edge-asd-sys {root}/sys", f"mount --rbind /dev {root}/dev"]
    for host, inside in binds.items():
        (root / inside.lstrip("/")).mkdir(parents=True, exist_ok=True)
        mounts.append(f"mount --bind {host} {root}{inside}")
    env = ["env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8", f"QEMU_CPU={cpu}",
           "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_CERT=/etc/ssl/certs/host-ca.crt", "PYTHONDONTWRITEBYTECODE=1"]
    script = " && ".join(mounts) + ' && exec chroot "$0" "$@"'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(root), *env, *argv],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "QEMU_CPU": cpu})


def emulated_hwcaps(root: Path, cpu: str) -> list[str]:
    """The names, among HWCAP_BITS, of the features the emulated CPU reports to programs (getauxval(AT_HWCAP),
    what XNNPACK chooses its kernels by): a cortex-a72 has none of them, a cortex-a76 atomics and asimddp."""
    code = "import ctypes; print(ctypes.CDLL(None).getauxval(16))"
    proc = chroot(root, cpu, ["python3", "-c", code], {})
    hwcap = int(proc.stdout.strip() or 0)
    return [name for name, bit in HWCAP_BITS.items() if hwcap >> bit & 1]


def install_kit(root: Path, cpu: str) -> None:
    """This working tree's kit with its edge and finetune extras, into a venv in the root; the extras'
    dependencies once (pinned to this machine's versions), the kit itself on every run."""
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", root / "etc" / "ssl" / "certs" / "host-ca.crt")
    src = root / SRC.lstrip("/")
    if src.exists():
        shutil.rmtree(src)
    files = subprocess.run(["git", "-C", REPO, "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    from importlib.metadata import version
    (src / "constraints.txt").write_text("".join(f"{p}=={version(p)}\n" for p in PINNED))
    pip = f"{VENV}/bin/python -m pip install -q"
    steps = []
    if not (root / VENV.lstrip("/") / "bin" / "python").exists():
        steps.append(f"python3 -m venv {VENV}")
    if not (root / DEPS_DONE).exists():
        steps.append(f"{pip} -c {SRC}/constraints.txt '{SRC}[edge,finetune]' && touch /{DEPS_DONE}")
    # the build backend once in the venv (bookworm's is older than pyproject's floor), then no isolated build
    steps.append(f"{pip} 'setuptools>=69' && {pip} --no-deps --force-reinstall --no-build-isolation {SRC}")
    for step in steps:
        print(f"arm64: {step}", file=sys.stderr, flush=True)
        proc = chroot(root, cpu, ["sh", "-c", step], {})
        if proc.returncode != 0:
            sys.exit(f"arm64 install failed: {step}\n{proc.stdout}{proc.stderr}")


# The commands, on either machine ----------------------------------------------------------------------------
