"""Where and how a forward pass runs: device, CPU capability, autocast, threads, memory, progress.

Memory
------
A CPU forward pass on a 400x400 plane allocates and frees about 100 MB of activations. By
default glibc gives such blocks back to the system when they are freed, so every pass faults
them in afresh (about 22,000 page faults and a quarter of the CPU time, measured here). Before
its first CPU inference nunet therefore asks glibc (``mallopt``) to serve blocks of up to
32 MiB from its heap and to keep up to 1 GiB of freed heap for reuse
(:func:`reuse_freed_memory`); the process's memory then stays near its peak between passes.

CPU capability
--------------
:func:`cpu_info` reads what the CPU can do once: torch's kernel level (``AVX2``, ``AVX512``, ...),
whether bf16 arithmetic is native (AVX512-BF16 or AMX-BF16) and whether oneDNN may use AMX's
matrix units; ``ONEDNN_MAX_CPU_ISA`` below those levels turns them off, as it does in oneDNN.
Without native bf16, oneDNN emulates it and a bf16 pass is an order of magnitude slower than fp32
(about 14x, measured on an AVX2-only CPU), so ``precision="auto"`` never considers bf16 there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from nunet.errors import ModelError

#: glibc mallopt parameters (malloc.h) and the values :func:`reuse_freed_memory` sets.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES, HEAP_BLOCK_BYTES = 1 << 30, 32 << 20
#: /proc/cpuinfo flags of native bf16 arithmetic on x86.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
#: ``ONEDNN_MAX_CPU_ISA`` values (oneDNN's names) below which oneDNN has no native bf16, and no AMX.
ISAS_WITHOUT_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"})
ISAS_WITHOUT_AMX = ISAS_WITHOUT_BF16 | {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512"}


def resolve_device(device: str = "auto") -> str:
    """Map ``"auto"`` to ``"cuda"``, then ``"mps"``, then ``"cpu"``; check an explicit choice exists."""
    import torch

    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device '{device}' requested but CUDA is not available")
    if kind == "mps" and not mps:
        raise ModelError(f"device '{device}' requested but MPS is not available")
    if kind not in ("cpu", "cuda", "mps"):
        raise ModelError(f"unknown device '{device}' (use auto, cpu, cuda, cuda:N or mps)")
    return device


@dataclass(frozen=True)
class CpuInfo:
    """What the CPU offers a forward pass.

    Attributes
    ----------
    capability : str
        torch's CPU kernel level, ``torch.backends.cpu.get_cpu_capability()`` (e.g. ``AVX2``).
    native_bf16 : bool
        bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16) and enabled in oneDNN.
    amx : bool
        AMX-BF16 matrix units in hardware and enabled in oneDNN.
    """

    capability: str
    native_bf16: bool
    amx: bool = False

    @property
    def kind(self) -> str:
        """The CPU kind benchmarks report: ``AMX``, ``AVX512-BF16``, or torch's level (``AVX512``, ``AVX2``)."""
        return "AMX" if self.amx else "AVX512-BF16" if self.native_bf16 else self.capability

    def describe(self) -> str:
        """One line for benchmarks and reports, e.g. ``AVX2, bf16 emulated``."""
        return f"{self.kind}, bf16 {'native' if self.native_bf16 else 'emulated'}"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (None where there is no such file)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This CPU's :class:`CpuInfo` (read once; a hardware fact, not a setting).

    bf16 is native when oneDNN enables its bf16 kernels, ``ONEDNN_MAX_CPU_ISA`` does not cap them
    and, on Linux x86, the CPU lists a native bf16 flag; oneDNN also "supports" bf16 on plain
    AVX-512 by emulation, which is slower than fp32.
    """
    import os
    import platform

    import torch

    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    onednn = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    flags = cpu_flags() if platform.machine().lower() in ("x86_64", "amd64") else None
    native = onednn and cap not in ISAS_WITHOUT_BF16 and (flags is None or bool(flags & BF16_FLAGS))
    amx = native and cap not in ISAS_WITHOUT_AMX and flags is not None and "amx_bf16" in flags
    return CpuInfo(torch.backends.cpu.get_cpu_capability(), native, amx)


@lru_cache(maxsize=1)
def reuse_freed_memory() -> bool:
    """Make glibc reuse freed activation memory instead of returning it (see module docstring).

    Returns False, changing nothing, where the C library is not glibc (macOS, Windows, musl).
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    blocks = mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES)
    return bool(blocks) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES))


def autocast(device: str, precision: str):
    """torch's autocast for ``bf16``/``fp16`` on ``device``; nothing for ``fp32``."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """Run torch's CPU operators with ``threads`` threads (None: unchanged), then restore the count.

    The count is process-wide: it is only touched when it differs from the current one.
    """
    import torch

    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class progress:
    """Context manager yielding ``advance(n)`` (n may be a fraction: a tile of a pass); shows a rich
    bar on stderr when enabled."""

    def __init__(self, enabled: bool, total: int, unit: str = "planes") -> None:
        self.enabled = enabled and total > 1
        self.total, self.unit = total, unit

    def __enter__(self) -> Callable[[float], None]:
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._bar = Progress(
            self.unit,
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.__enter__()
        task = self._bar.add_task(self.unit, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._bar.__exit__(*exc)
