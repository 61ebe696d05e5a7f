"""``precision="auto"``: measured choices of precision, threads, batch size and tile side.

A :class:`Tuner` owns what it measured, keyed by model file and device, and reuses it for
later calls; :meth:`Tuner.clear` forgets it. ``inference`` uses :data:`DEFAULT_TUNER`.

What is measured, in order, on a 256x256 synthetic nuclei plane:

1. Precision: only candidates that can win on the hardware are timed. On a CPU, fp32, plus
   bf16 where bf16 is native (:func:`nunet.core.runtime.cpu_info`; emulated bf16 is about 14x slower
   than fp32, so it is never timed). On CUDA, fp32, fp16 and bf16. Each is timed (best of 2 after
   a warm-up, the candidates taking turns) and the fastest whose [0, 1] output is within
   ``AUTO_TOLERANCE`` of fp32 wins.
2. Batch size (GPUs only; on a CPU larger batches are slower per plane, so it is 1): the
   smallest of ``BATCH_CANDIDATES`` within 5% of the best time per plane.
3. CPU threads: torch's count and half of it, the smaller within 5% (fewer threads leave
   cores to a batch's reader and writer threads).
4. Tile side, for CPU planes large enough to be tiled and no side given: each of
   ``TILE_CANDIDATES`` on a ``TILE_PROBE_SIDE`` square, the smallest within 5% of the fastest.

Steps 1 and 3 take about 1 s on two cores (fp32 only); step 4 about 2 s per side and only for
planes that are themselves large.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from nunet.core.preprocess import normalise_plane, to_unit_range
from nunet.core.runtime import autocast, cpu_info, num_threads

if TYPE_CHECKING:
    import torch

    from nunet.core.modelfile import LoadedModel

AUTO_TOLERANCE = 1e-2
#: Plane batch sizes ``auto`` tries, per device kind.
BATCH_CANDIDATES = {"cpu": (1,), "cuda": (1, 4, 8, 16, 32), "mps": (1, 4, 8, 16)}
#: Tile sides ``auto`` times on a CPU for planes it tiles, and the side of the probe plane.
TILE_CANDIDATES = (256, 512)
TILE_PROBE_SIDE = 1024
PROBE_SIDE = 256
#: Timed passes after one warm-up pass.
TIMED_PASSES = 2


def default_batch_size(device: str) -> int:
    """Planes per forward pass: 1 on a CPU (measured: larger batches are slower per plane), else 8."""
    return 1 if device == "cpu" else 8


def precision_candidates(device: str) -> list[str]:
    """The precisions that can beat fp32 on ``device`` (fp32 first, the reference)."""
    kind = device.split(":")[0]
    if kind == "cuda":
        return ["fp32", "fp16", "bf16"]
    if kind == "cpu" and cpu_info().native_bf16:
        return ["fp32", "bf16"]
    return ["fp32"]


def smallest_within(seconds: dict[int, float], tolerance: float = 0.05) -> int:
    """The smallest setting (batch size, thread count) whose time is within ``tolerance`` of the best.

    More planes per batch or more threads only earn their memory or cores when they are
    measurably faster.
    """
    best = min(seconds.values())
    return min(b for b, t in seconds.items() if t <= best * (1.0 + tolerance))


@lru_cache(maxsize=1)
def probe_plane() -> np.ndarray:
    """A normalised synthetic nuclei plane of ``PROBE_SIDE`` (made once; read-only)."""
    from nunet.data.synth import synth_image

    plane = normalise_plane(synth_image("dense", (PROBE_SIDE, PROBE_SIDE), seed=0).image)
    plane.flags.writeable = False
    return plane


def time_passes(
    modules: "dict[str, torch.nn.Module]", x: "torch.Tensor", device: str
) -> "dict[str, tuple[float, torch.Tensor]]":
    """Best of ``TIMED_PASSES`` forward passes after a warm-up of each module (keyed by the precision
    it runs in), and its last output in [0, 1]. The modules take turns, pass by pass, so a burst of
    load on a shared machine falls on all of them rather than on one alone."""
    import torch

    times: dict[str, list[float]] = {precision: [] for precision in modules}
    outputs = {}
    with torch.inference_mode():
        for _ in range(1 + TIMED_PASSES):
            for precision, module in modules.items():
                with autocast(device, precision):
                    start = time.perf_counter()
                    outputs[precision] = to_unit_range(module(x)).cpu()
                    times[precision].append(time.perf_counter() - start)
    return {precision: (min(seconds[1:]), outputs[precision]) for precision, seconds in times.items()}


@dataclass
class Tuner:
    """Measured ``auto`` choices, cached per model file and device (see module docstring)."""

    precisions: dict[tuple[str, str], str] = field(default_factory=dict)
    batch_sizes: dict[tuple[str, str, str], int] = field(default_factory=dict)
    threads: dict[tuple[str, str, int, int], int] = field(default_factory=dict)
    tile_sides: dict[tuple[str, str, int], int] = field(default_factory=dict)
    seconds: dict[tuple[str, str, str, int, int], float] = field(default_factory=dict)

    def clear(self) -> None:
        """Forget every measurement."""
        for cache in (self.precisions, self.batch_sizes, self.threads, self.tile_sides, self.seconds):
            cache.clear()

    def _probe_seconds(self, loaded: "LoadedModel", device: str, precision: str, batch: int) -> float:
        """Seconds of one pass over ``batch`` probe planes, measured once per setting and thread count."""
        import torch

        key = (str(loaded.path), device, precision, batch, torch.get_num_threads())
        if key not in self.seconds:
            x = torch.from_numpy(np.repeat(probe_plane()[None, None], batch, axis=0)).to(device)
            self.seconds[key] = time_passes({precision: loaded.network(precision)}, x, device)[precision][0]
        return self.seconds[key]

    def precision(self, loaded: "LoadedModel", device: str) -> str:
        """The precision ``auto`` picks for a model on a device (step 1)."""
        import torch

        key = (str(loaded.path), device)
        if key not in self.precisions:
            candidates = precision_candidates(device)
            if len(candidates) == 1:
                self.precisions[key] = candidates[0]
                return candidates[0]
            batch = default_batch_size(device)
            x = torch.from_numpy(np.repeat(probe_plane()[None, None], batch, axis=0)).to(device)
            results = time_passes({p: loaded.network(p) for p in candidates}, x, device)
            for p, (seconds, _) in results.items():
                self.seconds[(str(loaded.path), device, p, batch, torch.get_num_threads())] = seconds
            reference = results["fp32"][1]
            allowed = [p for p in candidates if float((results[p][1] - reference).abs().max()) <= AUTO_TOLERANCE]
            self.precisions[key] = min(allowed, key=lambda p: results[p][0])
        return self.precisions[key]

    def batch_size(self, loaded: "LoadedModel", device: str, precision: str) -> int:
        """The plane batch size ``auto`` uses (step 2)."""
        key = (str(loaded.path), device, precision)
        if key not in self.batch_sizes:
            candidates = BATCH_CANDIDATES.get(device.split(":")[0], (1,))
            self.batch_sizes[key] = (
                candidates[0]
                if len(candidates) == 1
                else smallest_within({b: self._probe_seconds(loaded, device, precision, b) / b for b in candidates})
            )
        return self.batch_sizes[key]

    def thread_count(self, loaded: "LoadedModel", precision: str, batch_size: int) -> int:
        """The CPU thread count ``auto`` uses (step 3)."""
        import torch

        current = torch.get_num_threads()
        key = (str(loaded.path), precision, batch_size, current)
        if key not in self.threads:
            seconds = {}
            for count in sorted({current, max(1, current // 2)}):
                with num_threads(count):
                    seconds[count] = self._probe_seconds(loaded, "cpu", precision, batch_size)
            self.threads[key] = smallest_within(seconds)
        return self.threads[key]

    def tile_side(self, loaded: "LoadedModel", precision: str) -> int:
        """The CPU tile side ``auto`` uses for planes it tiles (step 4; tiled passes need no warm-up)."""
        import torch

        from nunet.core.tiling import tiled_forward

        key = (str(loaded.path), precision, torch.get_num_threads())
        if key not in self.tile_sides:
            plane = probe_plane()
            repeats = -(-TILE_PROBE_SIDE // plane.shape[0])
            tiled = np.tile(plane, (repeats, repeats))[:TILE_PROBE_SIDE, :TILE_PROBE_SIDE]
            x = torch.from_numpy(np.ascontiguousarray(tiled)[None, None])
            seconds = {}
            with torch.inference_mode(), autocast("cpu", precision):
                for side in TILE_CANDIDATES:
                    start = time.perf_counter()
                    tiled_forward(loaded.module, x, side)
                    seconds[side] = time.perf_counter() - start
            self.tile_sides[key] = smallest_within(seconds)
        return self.tile_sides[key]


#: The tuner ``nunet.api`` uses unless given another.
DEFAULT_TUNER = Tuner()
