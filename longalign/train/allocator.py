"""The memory allocator of a CPU training process: which one runs, and how it is chosen.

PyTorch takes the memory of every CPU tensor from the C library's ``malloc``, so the allocator decides both the
speed of a step (how often large blocks are mapped, faulted in, zeroed by the kernel and unmapped) and its peak
resident memory (whether a freed activation goes back to the system or stays in the process). The settings:

``tcmalloc`` (the default for CPU training, ``auto``)
    gperftools' tcmalloc (Debian/Ubuntu: ``libtcmalloc-minimal4``), loaded with ``LD_PRELOAD``. It keeps freed
    large blocks for reuse instead of handing them back and faulting them in again, so the kernel's share of
    a step's CPU time falls from a fifth to a twentieth; its peak stays within a few per cent of ``lean``'s
    (measured with ``benchmarks/allocator.py``; README, "How long can I train? The memory plan").
``glibc``
    glibc's malloc as it is. Blocks above its dynamic mmap threshold (up to 32 MiB; the loss head's 128 MB
    chunks always) are mapped and zeroed anew on every allocation; smaller ones come from its heap, which
    fragments, so the peak can exceed the live tensors.
``lean``
    glibc with a fixed 1 MiB mmap threshold (``mallopt(M_MMAP_THRESHOLD)``, set in-process when training
    starts): every block of 1 MiB or more leaves the process when freed. The lowest peak, and the slowest:
    every large tensor is mapped and zeroed anew. ``longalign train --memory-plan`` and the trainer say when
    a run's predicted peak is close enough to the machine's memory to want it.
``jemalloc``
    jemalloc (``libjemalloc2``), loaded with ``LD_PRELOAD``, with its own defaults.

The dynamic loader reads ``LD_PRELOAD`` only when a process starts, so a preloaded allocator cannot be switched
on inside a running interpreter. The training commands (``longalign train``, ``demo``, ``experiment``) start
themselves once more with the variable set (:func:`restart_with_preload`: same process id, same arguments; the
log says so); ``longalign.train.train`` called from Python runs on what its interpreter was started with and
falls back to ``glibc`` for ``auto``. ``auto`` keeps ``glibc`` where no tcmalloc library is installed and on a
machine with a visible NVIDIA GPU (the measurement is of CPU training).

The choice comes from ``--cpu-allocator`` (``TrainConfig.cpu_allocator``), else the environment variable
``LONGALIGN_CPU_ALLOCATOR``, else ``auto``. ``MALLOC_MMAP_THRESHOLD_`` in the environment is the user's own glibc
setting and is left alone.

This module imports no third-party library (the command line uses it before torch is loaded).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "LONGALIGN_CPU_ALLOCATOR"
# set on the process that a training command starts again with LD_PRELOAD: it never restarts twice
RESTARTED_ENV = "LONGALIGN_CPU_ALLOCATOR_RESTARTED"
CHOICES = ("auto", "glibc", "lean", "tcmalloc", "jemalloc")
PRELOADED = ("tcmalloc", "jemalloc")
DEFAULT = "tcmalloc"  # what ``auto`` means for CPU training (benchmarks/allocator.py)
LIBRARIES = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so"),
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
}
PACKAGES = {"tcmalloc": "libtcmalloc-minimal4", "jemalloc": "libjemalloc2"}  # Debian / Ubuntu
# where Debian, Ubuntu, Fedora and conda put shared libraries (the running Python's prefix is searched first)
LIBRARY_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/lib/x86_64-linux-gnu",
    "/lib64",
)
# tcmalloc reports every allocation above 1 GiB on stderr by default; a long pack makes such tensors routinely
PRELOAD_ENV = {"tcmalloc": {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}}
LEAN_MMAP_THRESHOLD = 1 << 20  # bytes: with ``lean``, blocks this large get their own mapping
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def check_choice(name: str) -> str:
    """``name`` if it is one of :data:`CHOICES`, else a ValueError naming them."""
    if name not in CHOICES:
        raise ValueError(f"CPU allocator {name!r} is not one of {', '.join(CHOICES)} (--cpu-allocator or ${ENV})")
    return name


def requested(option: str | None = "auto", environ: Mapping[str, str] | None = None) -> str:
    """The setting asked for: ``option`` (``--cpu-allocator``) unless it is ``auto``, else
    ``$LONGALIGN_CPU_ALLOCATOR``, else ``auto``."""
    env = os.environ if environ is None else environ
    if option and option != "auto":
        return check_choice(option)
    return check_choice((env.get(ENV) or "auto").strip().lower() or "auto")


def find_library(name: str, dirs: Sequence[str | Path] = LIBRARY_DIRS) -> str | None:
    """The path of ``name``'s shared library (``tcmalloc`` / ``jemalloc``) in the running Python's prefix or the
    usual library folders, or None."""
    folders = [Path(sys.prefix) / "lib", *map(Path, dirs)]
    for file in LIBRARIES.get(name, ()):
        for folder in folders:
            path = folder / file
            if path.is_file():
                return str(path)
    return None


def loaded(maps: str | None = None) -> str:
    """The allocator this process runs on: ``tcmalloc`` or ``jemalloc`` when its library is mapped (read from
    ``/proc/self/maps``, or the text ``maps``), else ``glibc``."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return "glibc"
    for name, files in LIBRARIES.items():
        stems = {f.split(".so")[0] + ".so" for f in files}
        if any(f"/{stem}" in maps for stem in stems):
            return name
    return "glibc"


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this process, read without loading torch (the driver's device files
    and ``CUDA_VISIBLE_DEVICES``)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/gpus").is_dir() and any(Path("/proc/driver/nvidia/gpus").iterdir())


@dataclass(frozen=True)
class Decision:
    """What a run uses: ``setting`` (glibc, lean, tcmalloc or jemalloc), the ``library`` to preload (tcmalloc,
    jemalloc), and ``note``: why it differs from what was asked, if it does."""

    requested: str
    setting: str
    library: str | None = None
    note: str = ""


def decide(choice: str, *, find: Callable[[str], str | None] | None = None, gpu: bool = False) -> Decision:
    """The setting for ``choice`` (one of :data:`CHOICES`). ``auto`` is :data:`DEFAULT` when its library is found
    and no GPU is visible (``gpu``), else ``glibc``; ``tcmalloc`` / ``jemalloc`` asked for by name must be
    installed (ValueError naming the package otherwise)."""
    check_choice(choice)
    if choice == "auto" and gpu:
        return Decision(choice, "glibc", None, "a GPU is visible: the CPU allocator stays glibc's")
    name = DEFAULT if choice == "auto" else choice
    if name not in PRELOADED:
        return Decision(choice, name)
    library = (find or find_library)(name)
    if library is not None:
        return Decision(choice, name, library)
    if choice == "auto":
        return Decision(
            choice, "glibc", None, f"{name} is not installed (Debian/Ubuntu: apt-get install {PACKAGES[name]})"
        )
    raise ValueError(
        f"--cpu-allocator {name}: its library ({' or '.join(LIBRARIES[name])}) was not found in "
        f"{', '.join(LIBRARY_DIRS)}; install it (Debian/Ubuntu: apt-get install {PACKAGES[name]}) or choose "
        f"another of {', '.join(CHOICES)}"
    )


def preload_environment(decision: Decision, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a process that starts with ``decision``'s library preloaded (LD_PRELOAD first, the
    allocator's quiet settings where the user set none, and the marker that stops a second restart)."""
    env = dict(os.environ if environ is None else environ)
    if decision.library is None:
        return env
    preload = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if p and p != decision.library]
    env["LD_PRELOAD"] = " ".join([decision.library, *preload])
    for key, value in PRELOAD_ENV.get(decision.setting, {}).items():
        env.setdefault(key, value)
    env[RESTARTED_ENV] = decision.setting
    return env


def restart_command(
    decision: Decision,
    argv: Sequence[str],
    environ: Mapping[str, str] | None = None,
    *,
    platform: str = sys.platform,
    current: str | None = None,
) -> tuple[list[str], dict[str, str]] | None:
    """``(argv, environment)`` to start this command again with ``decision``'s library preloaded, or None when no
    restart is needed or possible: not Linux, a setting applied in-process (glibc, lean), the allocator already
    loaded, or a restart already done (never loops)."""
    env = os.environ if environ is None else environ
    if decision.library is None or not platform.startswith("linux") or env.get(RESTARTED_ENV):
        return None
    if (current if current is not None else loaded()) == decision.setting:
        return None
    return list(argv), preload_environment(decision, env)


def restart_with_preload(option: str | None = "auto", *, execve: Callable[..., None] = os.execve) -> None:
    """Start the running command line again with the allocator of ``option`` preloaded, when it asks for one that
    is not loaded yet (see the module docstring); returns when nothing needs doing or the restart fails. Call it
    before any work: the process image is replaced (same process id, same arguments: ``sys.orig_argv``)."""
    decision = decide(requested(option), gpu=gpu_visible())
    if decision.note:
        log.info("CPU allocator: %s", decision.note)
    argv = list(getattr(sys, "orig_argv", []) or [])
    command = restart_command(decision, argv) if argv else None
    if command is None:
        return
    log.info(
        "CPU allocator: starting again with %s preloaded (LD_PRELOAD=%s; --cpu-allocator glibc or lean keeps "
        "glibc's malloc)",
        decision.setting,
        decision.library,
    )
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        execve(sys.executable, command[0], command[1])
    except OSError as exc:  # the command goes on with glibc
        log.warning("CPU allocator: could not start again with %s (%s); using glibc", decision.setting, exc)


def apply_in_process(decision: Decision, environ: Mapping[str, str] | None = None) -> str:
    """Make the running process use ``decision`` as far as it can from inside, and return the setting in force.

    ``lean`` sets glibc's mmap threshold (skipped when ``MALLOC_MMAP_THRESHOLD_`` is set: the user's glibc
    setting stands); ``tcmalloc`` / ``jemalloc`` are in force only when the process started with them, else
    glibc runs (a warning when one was asked for by name, how to get it)."""
    env = os.environ if environ is None else environ
    now = loaded()
    if decision.setting == "lean" and now == "glibc":
        if env.get("MALLOC_MMAP_THRESHOLD_") is not None:
            return "glibc"
        return "lean" if set_mmap_threshold(LEAN_MMAP_THRESHOLD) else "glibc"
    if decision.setting in PRELOADED and now != decision.setting:
        report = log.warning if decision.requested != "auto" else log.info
        report(
            "CPU allocator %s is not loaded in this process (it runs on %s): a preloaded allocator is chosen when "
            "a process starts; longalign train does that itself, from Python start the interpreter with "
            "LD_PRELOAD=%s",
            decision.setting,
            now,
            decision.library,
        )
    return now


def set_mmap_threshold(threshold: int) -> bool:
    """glibc's ``mallopt(M_MMAP_THRESHOLD, threshold)``: blocks of ``threshold`` bytes or more get their own
    mapping, returned to the system when freed. False off Linux or without glibc's ``mallopt``."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))
