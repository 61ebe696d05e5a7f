"""precision="auto": what it times on this CPU, the choices it caches, and outputs within its tolerance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import blobs, enhance_native
from nunet import enhance


def test_auto_precision_stays_within_tolerance_of_fp32():
    from nunet import load_model
    from nunet.core.autotune import AUTO_TOLERANCE, Tuner, precision_candidates
    from nunet.data.synth import MODALITIES, synth_image

    chosen = Tuner().precision(load_model("nunet-v10"), "cpu")
    assert chosen in precision_candidates("cpu")
    for k, modality in enumerate(MODALITIES):
        image = synth_image(modality, (200, 184), seed=40 + k).image
        reference = enhance(image, "nunet-v10", device="cpu", precision="fp32")
        auto = enhance(image, "nunet-v10", device="cpu", precision="auto")
        assert np.abs(auto - reference).max() <= AUTO_TOLERANCE, modality


def test_auto_times_only_what_the_cpu_runs_natively(model, tuner):
    """Emulated bf16 is never a candidate; only the candidates are timed (how long the measurement
    takes is a benchmark's figure, not a test's: a loaded machine is slow)."""
    from nunet.core.autotune import precision_candidates
    from nunet.core.runtime import cpu_info

    info = cpu_info()
    print(f"CPU: {info.describe()}")
    assert precision_candidates("cpu") == (["fp32", "bf16"] if info.native_bf16 else ["fp32"])
    enhance(blobs((40, 36)), model, device="cpu", precision="auto")
    timed = {key[2] for key in tuner.seconds}
    assert timed <= set(precision_candidates("cpu"))
    tuner.clear()
    assert not tuner.seconds and not tuner.precisions and not tuner.threads


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    from nunet.core.runtime import cpu_flags

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n\n")
    assert {"avx2", "avx512_bf16"} <= cpu_flags(info)
    assert cpu_flags(tmp_path / "missing") is None


@pytest.mark.parametrize("cap", ["AVX2", "AVX512_CORE", "AVX512_CORE_BF16"])
def test_onednn_held_below_bf16_or_amx_turns_them_off(cap):
    """``ONEDNN_MAX_CPU_ISA`` below AVX512_CORE_BF16 leaves no native bf16, below AMX no AMX (a fresh
    process: the CPU is read once per process)."""
    import os
    import subprocess
    import sys

    code = "from nunet.core.runtime import cpu_info; i = cpu_info(); print(i.native_bf16, i.amx)"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": cap}
    native, amx = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.split()
    assert amx == "False" and (native == "False" or cap == "AVX512_CORE_BF16")


def test_smallest_within_prefers_the_smallest_setting_within_tolerance():
    from nunet.core.autotune import smallest_within

    assert smallest_within({1: 0.30, 2: 0.32, 4: 0.40}) == 1
    assert smallest_within({1: 0.30, 4: 0.20, 8: 0.195, 16: 0.21}) == 4
    assert smallest_within({1: 0.30, 4: 0.20, 8: 0.10}) == 8


def test_auto_measures_threads_runs_with_them_and_restores_the_count(model, tuner, monkeypatch):
    from nunet.core import planes

    before = torch.get_num_threads()
    img = blobs((40, 36))
    out = enhance_native(img, model, precision="auto")
    precision = tuner.precisions[(str(model.path), "cpu")]
    batch = tuner.batch_sizes[(str(model.path), "cpu", precision)]
    key = (str(model.path), precision, batch, before)
    assert tuner.threads[key] in {before, max(1, before // 2)}
    assert torch.get_num_threads() == before
    np.testing.assert_allclose(out, enhance_native(img, model, precision=precision), atol=1e-5)
    seen = []
    tuner.threads[key] = 1  # a cached choice is used, not measured again
    monkeypatch.setattr(planes, "crop_plane", lambda y, *_, **__: (seen.append(torch.get_num_threads()), y)[1])
    enhance_native(img, model, precision="auto")
    assert seen == [1] and torch.get_num_threads() == before


def test_auto_uses_a_cached_batch_size_and_keeps_the_output(model, tuner):
    from nunet.core.autotune import BATCH_CANDIDATES

    img = blobs((3, 40, 36))
    out = enhance_native(img, model, precision="auto")
    precision = tuner.precisions[(str(model.path), "cpu")]
    key = (str(model.path), "cpu", precision)
    measured = tuner.batch_sizes[key]
    assert measured in BATCH_CANDIDATES["cpu"]
    np.testing.assert_allclose(out, enhance_native(img, model, precision=precision, batch_size=measured), atol=1e-5)
    tuner.batch_sizes[key] = 2  # a cached choice is used, not measured again
    np.testing.assert_allclose(
        enhance_native(img, model, precision="auto"),
        enhance_native(img, model, precision=precision, batch_size=2),
        atol=1e-5,  # auto may run with another thread count: another summation order
    )


def test_auto_measures_a_tile_side_for_large_cpu_planes(model, tuner, monkeypatch):
    """A plane above the CPU tiling threshold: auto probes each candidate tile side once, runs the
    plane with the chosen one, and later calls reuse the choice without probing again."""
    from nunet.core import autotune, planes, tiling

    for kind in ("cpu", "cpu-bf16"):  # smaller sizes, same logic, faster
        monkeypatch.setitem(planes.AUTO_TILING, kind, (300 * 300, 256))
    monkeypatch.setattr(autotune, "TILE_PROBE_SIDE", 512)
    img = blobs((320, 320))
    sides, real = [], tiling.tiled_forward
    monkeypatch.setattr(
        tiling,
        "tiled_forward",
        lambda module, x, side, on_tile=None: (sides.append(side), real(module, x, side, on_tile))[1],
    )
    out = enhance_native(img, model, precision="auto")
    precision = tuner.precisions[(str(model.path), "cpu")]
    (key,) = [k for k in tuner.tile_sides if k[:2] == (str(model.path), precision)]
    chosen = tuner.tile_sides[key]
    assert sides == [*autotune.TILE_CANDIDATES, chosen]
    np.testing.assert_allclose(out, enhance_native(img, model, precision=precision, tile_size=chosen), atol=1e-5)
    sides.clear()
    enhance_native(img, model, precision="auto")
    assert sides == [chosen]


@pytest.fixture
def tuner():
    """The tuner enhance uses, empty before and after the test."""
    from nunet.core.autotune import DEFAULT_TUNER

    DEFAULT_TUNER.clear()
    yield DEFAULT_TUNER
    DEFAULT_TUNER.clear()


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_repeated_cpu_passes_reuse_memory_instead_of_faulting_it_in():
    """Without reuse_freed_memory glibc unmaps the freed activations and each 400x400 pass
    page-faults ~20,000 pages back in; with it warm passes fault almost none (fresh process; the
    fewest of three warm passes, as the heap occasionally grows by a few thousand pages once)."""
    import subprocess
    import sys

    from nunet.core.autotune import precision_candidates

    precision = precision_candidates("cpu")[-1]  # what auto can pick here: bf16 only where it is native
    print(f"measured at {precision}")
    script = (
        "import resource, numpy as np\n"
        "from nunet import enhance\n"
        "from nunet.data.synth import synth_image\n"
        "img = synth_image('dense', (400, 400), seed=1).image\n"
        f"for _ in range(2): enhance(img, 'nunet-v10', device='cpu', precision='{precision}')\n"
        "faults = []\n"
        "for _ in range(3):\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        f"    enhance(img, 'nunet-v10', device='cpu', precision='{precision}')\n"
        "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
        "print(min(faults))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert int(done.stdout) < 2000
