"""The nucleus-radius estimate's accuracy, and what filtering at the model's scale costs or saves.

Usage: ``python benchmarks/bench_size.py [--data DSB_CHECKOUT] [--model NAME] [--skip-timing]``

Prints, for the DSB validation kinds (a checkout, else nunet's committed subset; clean and
degraded at their own scale) and for the synthetic suite (clean and degraded, seed 0), the share
of images whose estimate lands within +-25% of the true median equivalent radius of their labels,
with the median ratio estimate / truth: the scale-space estimate alone, and with the model's second
look (what ``radius="auto"`` uses); then ms/plane for a 1024x1024 plane of 40-px nuclei with
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
    return f"{100 * within:5.1f}% within +-25% (median ratio {np.nanmedian(ratios):.2f})"


def estimates(model: str, data: str | None) -> dict[str, list]:
    """Per family: (true radius, scale-space estimate, estimate with ``model``'s second look) per image."""
    from scipy import ndimage as ndi

    from nunet.api import radius_look, resolve_settings
    from nunet.core.size import estimate_radius
    from nunet.data.dsb import median_radius
    from nunet.evaluation.suites import degraded_synthetic_items, dsb_items, synthetic_items
    from nunet.options import FilterSettings

    looks = {
        invert: radius_look(resolve_settings(FilterSettings(model=model, invert=invert))) for invert in (False, True)
    }
    found: dict[str, list] = {}
    for item in dsb_items(data) + synthetic_items() + degraded_synthetic_items():
        # a DSB item's radius is its clean image's median radius (degraded copies keep the scale);
        # touching synthetic nuclei merge in the mask: a slight overestimate
        truth = item.radius if item.family.startswith("dsb") else median_radius(ndi.label(item.mask)[0])
        first = estimate_radius(item.image[None], item.invert)
        second = estimate_radius(item.image[None], item.invert, look=looks[item.invert])
        found.setdefault(item.family, []).append((truth, first, second))
    return found


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
    print(f"radius estimate against the labels' median equivalent radius; second look with {args.model}")
    for family, found in estimates(args.model, args.data).items():
        first, second = ([(t, e[i]) for t, *e in found] for i in (0, 1))
        print(f"  {family:26s} {len(found):3d} images: scale space {_score(first)}; second look {_score(second)}")
    if not args.skip_timing:
        timing(args.model)


if __name__ == "__main__":
    main()
