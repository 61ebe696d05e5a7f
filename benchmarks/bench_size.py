"""The nucleus-radius estimate's accuracy, and what filtering at the model's scale costs or saves.

Usage: ``python benchmarks/bench_size.py [--data DSB_CHECKOUT] [--model NAME] [--skip-timing]``

Prints, for the DSB validation kinds (a checkout, else nunet's committed subset; clean and
degraded at their own scale) and for the synthetic suite (clean and degraded, seed 0), the share
of images whose estimate lands within +-25% of the true median equivalent radius of their labels,
with the median ratio estimate / truth; then ms/plane for a 1024x1024 plane of 40-px nuclei with
``radius="auto"`` and ``radius="off"``, with the CPU's capability.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from nunet.options import DEFAULT_MODEL


def _score(pairs: list[tuple[float, float | None]]) -> str:
    ratios = np.array([(e if e is not None else np.nan) / t for t, e in pairs])
    within = np.mean((ratios >= 0.8) & (ratios <= 1.25))
    return f"{len(pairs):4d} images: {100 * within:5.1f}% within +-25%, median ratio {np.nanmedian(ratios):.2f}"


def dsb_pairs(data: str | None) -> dict[str, list]:
    from nunet.core.size import estimate_radius
    from nunet.evaluation.suites import dsb_items

    pairs: dict[str, list] = {}
    for item in dsb_items(data):
        labels_radius = item.radius  # the clean image's median radius (degraded copies keep the scale)
        pairs.setdefault(item.family, []).append((labels_radius, estimate_radius(item.image[None], item.invert)))
    return pairs


def synthetic_pairs() -> dict[str, list]:
    from scipy import ndimage as ndi

    from nunet.core.size import estimate_radius
    from nunet.data.dsb import median_radius
    from nunet.evaluation.suites import degraded_synthetic_items, synthetic_items

    pairs: dict[str, list] = {}
    for item in synthetic_items() + degraded_synthetic_items():
        truth = median_radius(ndi.label(item.mask)[0])  # touching nuclei merge in the mask: a slight overestimate
        pairs.setdefault(item.family, []).append((truth, estimate_radius(item.image[None], item.invert)))
    return pairs


def timing(model: str) -> None:
    import torch
    from scipy import ndimage as ndi

    from nunet import enhance, load_model
    from nunet.data.dsb import median_radius
    from nunet.data.synth import synth_image

    loaded = load_model(model, "cpu")
    source = synth_image("sparse", (180, 180), seed=1)
    plane = ndi.zoom(source.image, 1024 / 180, order=1)  # 1024 x 1024 px
    radius = median_radius(ndi.zoom(source.labels, 1024 / 180, order=0))
    print(
        f"\n1024x1024 plane, nuclei of median radius {radius:.0f} px; {model}; "
        f"CPU {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} thread(s)"
    )
    for radius in ("auto", "off"):
        enhance(plane[:256, :256], loaded, device="cpu", radius=radius)  # warm-up
        start = time.perf_counter()
        enhance(plane, loaded, device="cpu", radius=radius)
        print(f"  radius={radius:4s}: {1000 * (time.perf_counter() - start):8.0f} ms/plane")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="a checkout of the DSB repository (default: the subset)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="default: the default model")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    print("radius estimate against the labels' median equivalent radius")
    for family, pairs in {**dsb_pairs(args.data), **synthetic_pairs()}.items():
        print(f"  {family:26s} {_score(pairs)}")
    if not args.skip_timing:
        timing(args.model)


if __name__ == "__main__":
    main()
