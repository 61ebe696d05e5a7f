"""Supervised training: targets (dome, cone, masks), crops and banks, fine-tunes that lower their loss."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from nunet.data.synth import synth_image
from nunet.errors import NUNetError


@pytest.mark.slow
def test_supervised_route_lowers_its_loss_and_exports_a_model(tmp_path):
    import torch

    from nunet import enhance, load_model
    from nunet.core.model import NUNet
    from nunet.training.config import load_config
    from nunet.training.data import supervised_bank, supervised_batch
    from nunet.training.loop import train

    config = load_config(
        None,
        {
            "name": "nunet-sup",
            "w": 0.0,
            "content_weight": 0.0,
            "supervised_weight": 1.0,
            "supervised_batch": 4,
            "supervised_images": 2,
            "synthetic_content": 1,
            "synthetic_masks": 4,
            "crop": 48,
            "steps": 30,
            "lr": 3e-3,
            "device": "cpu",
            "degrade_content": True,
            "output_dir": str(tmp_path / "run"),
        },
    )
    path = train(config, command="test")
    model = load_model(path)
    bank = supervised_bank(config)
    inputs, masks = supervised_batch(bank, config, np.random.default_rng(99))

    def loss(net) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.l1_loss(net(inputs).clamp(0, 255), masks))

    torch.manual_seed(config.seed)
    assert loss(model.module) < loss(NUNet().eval())
    with (tmp_path / "run" / "losses.csv").open() as fh:
        log = list(csv.DictReader(fh))
    assert len(log) == 30 and float(log[0]["content"]) == 0.0 and float(log[-1]["supervised"]) > 0
    out = enhance(synth_image("sparse", (40, 44), seed=1).image, model)
    assert out.shape == (40, 44)
    assert "L1 to soft masks" in (tmp_path / "run" / "nunet-sup.md").read_text()


def test_dome_target_peaks_once_per_nucleus_with_gaps_between_touching_ones():
    from nunet.evaluation.metrics import detect_blobs
    from nunet.training.config import DOME_FLOOR
    from nunet.training.targets import dome_mask, soft_mask

    yy, xx = np.mgrid[0:64, 0:96]
    labels = np.zeros((64, 96), np.int32)
    labels[(yy - 32) ** 2 + (xx - 30) ** 2 <= 14**2] = 1
    labels[(yy - 32) ** 2 + (xx - 57) ** 2 <= 14**2] = 2  # touches nucleus 1
    dome = dome_mask(labels) / 255.0
    assert abs(dome[32, 30] - 1.0) < 0.05 and abs(dome[32, 57] - 1.0) < 0.05
    assert 0.3 < dome[32, 17] < DOME_FLOOR + 0.1  # near an edge: about the floor, softened
    assert dome[:, 43:45].max() < 0.5 * DOME_FLOOR + 0.1  # the gap between the two
    assert dome[labels == 0].max() < 0.45 and dome[0:5].max() == 0.0
    assert len(detect_blobs(dome, 10.0, 0.1)) == 2
    assert np.array_equal(soft_mask(labels) > 127, dome > 0.5 * DOME_FLOOR)  # the same nuclei, the same gap


def test_dome_target_of_a_nucleus_cut_by_the_frame_peaks_inside_with_inside_frame():
    from nunet.training.targets import dome_mask

    yy, xx = np.mgrid[0:64, 0:64]
    labels = np.zeros((64, 64), np.int32)
    labels[(yy - 32) ** 2 + (xx - 2) ** 2 <= 10**2] = 1  # cut by the left frame: visible centroid at x ~ 5
    labels[(yy - 32) ** 2 + (xx - 40) ** 2 <= 10**2] = 2
    at_frame, inside = dome_mask(labels), dome_mask(labels, inside_frame=True)
    assert np.unravel_index(at_frame[:, :16].argmax(), (64, 16))[1] <= 2
    assert 4 <= np.unravel_index(inside[:, :16].argmax(), (64, 16))[1] <= 8
    np.testing.assert_array_equal(at_frame[:, 20:], inside[:, 20:])  # nuclei inside the frame: the same


def test_cone_target_has_one_maximum_on_an_elongated_nucleus_at_its_centroid():
    from nunet.evaluation.metrics import detect_blobs
    from nunet.training.config import DOME_FLOOR
    from nunet.training.targets import cone_mask, dome_mask

    yy, xx = np.mgrid[0:64, 0:96]
    labels = np.zeros((64, 96), np.int32)
    labels[((yy - 32) / 8.0) ** 2 + ((xx - 40) / 30.0) ** 2 <= 1] = 1  # 60 x 16 px
    labels[(yy - 20) ** 2 + (xx - 90) ** 2 <= 8**2] = 2  # cut by the right frame: visible centroid at x ~ 87
    cone = cone_mask(labels) / 255.0
    assert np.unravel_index(cone[:, :75].argmax(), (64, 75)) == (32, 40)
    assert 85 <= np.unravel_index(cone[:, 75:].argmax(), (64, 21))[1] + 75 <= 89
    assert abs(cone[32, 40] - 1.0) < 0.05 and cone[labels == 0].max() < 0.45
    assert 0.3 < cone[32, 12] < DOME_FLOOR + 0.1  # the far end of the long axis: about the floor
    assert len(detect_blobs(cone[:, :75], 8.0, 0.1)) == 1
    assert len(detect_blobs(dome_mask(labels)[:, :75] / 255.0, 8.0, 0.1)) == 2  # the dome's ridge: two


def test_frame_pad_frames_each_crop_and_its_target_with_zeros():
    from dataclasses import replace

    from nunet.training.config import load_config
    from nunet.training.data import supervised_bank, supervised_batch

    config = load_config(
        None,
        {
            "supervised_weight": 1.0,
            "supervised_target": "dome",
            "supervised_images": 2,
            "supervised_batch": 4,
            "crop": 32,
            "synthetic_content": 1,
        },
    )
    bank = supervised_bank(config)
    framed = replace(config, frame_pad=6, frame_fill="zero")
    inputs, targets = supervised_batch(bank, framed, np.random.default_rng(3))
    plain, _ = supervised_batch(bank, config, np.random.default_rng(3))
    assert inputs.shape == targets.shape == (4, 1, 44, 44) and plain.shape == (4, 1, 32, 32)
    assert not inputs[..., torch_ring(44, 6)].any()
    assert not targets[..., torch_ring(44, 3)].any()  # a nucleus cut by the frame: only its softened edge reaches out
    assert float(targets[..., 6:38, 6:38].max()) > 200  # nuclei inside
    with pytest.raises(NUNetError, match="frame_pad"):
        load_config(None, {"frame_pad": 3, "synthetic_content": 1})
    with pytest.raises(NUNetError, match="'frame_fill' one of mean, edge, zero"):
        load_config(None, {"frame_pad": 4, "frame_fill": "blue", "synthetic_content": 1})


def test_crop_min_draws_one_side_per_batch_between_the_bounds():
    """crop_min: each supervised batch has one side, a multiple of 4 in [crop_min, crop] (plus the frame),
    its targets alike; sides vary between batches; a bad crop_min is refused."""
    from nunet.training.config import load_config
    from nunet.training.data import supervised_bank, supervised_batch

    config = load_config(
        None,
        {
            "supervised_weight": 1.0,
            "supervised_images": 2,
            "supervised_batch": 2,
            "crop": 48,
            "crop_min": 16,
            "frame_pad": 4,
            "synthetic_content": 1,
        },
    )
    bank, rng = supervised_bank(config), np.random.default_rng(7)
    sides = set()
    for _ in range(12):
        inputs, targets = supervised_batch(bank, config, rng)
        side = inputs.shape[-1] - 8
        assert inputs.shape == targets.shape == (2, 1, side + 8, side + 8)
        assert 16 <= side <= 48 and side % 4 == 0
        sides.add(side)
    assert len(sides) > 2
    for bad in (12, 18, 52):
        with pytest.raises(NUNetError, match="crop_min"):
            load_config(None, {"crop": 48, "crop_min": bad, "synthetic_content": 1})


def torch_ring(side: int, width: int):
    """A boolean (side, side) tensor, True on the outer ``width`` px."""
    import torch

    ring = torch.ones((side, side), dtype=torch.bool)
    ring[width:-width, width:-width] = False
    return ring


@pytest.mark.slow
@pytest.mark.parametrize(("target", "crop_min"), [("dome", 0), ("cone", 32)])
def test_dome_and_cone_fine_tunes_from_a_model_lower_their_loss(tmp_path, model_path, target, crop_min):
    import torch

    from nunet import load_model
    from nunet.training.config import load_config
    from nunet.training.data import supervised_bank, supervised_batch
    from nunet.training.loop import initial_weights, train

    config = load_config(
        None,
        {
            "name": "nunet-dome",
            "w": 0.0,
            "content_weight": 0.0,
            "supervised_weight": 1.0,
            "supervised_target": target,
            "supervised_loss": "l2",
            "supervised_strength": 0.75,
            "family": "test-family",
            "frame_pad": 4,
            "init_model": str(model_path),
            "supervised_batch": 4,
            "supervised_images": 2,
            "synthetic_content": 1,
            "synthetic_masks": 4,
            "crop": 48,
            "crop_min": crop_min,
            "steps": 15,
            "lr": 3e-3,
            "device": "cpu",
            "output_dir": str(tmp_path / "run"),
        },
    )
    exported = load_model(train(config, command="test"))
    assert (exported.w, exported.metadata["family"], exported.frame.pad) == (0.75, "test-family", 4)
    tuned = exported.module
    start = load_model(model_path).module
    assert initial_weights(str(model_path)).keys() == tuned.state_dict().keys()
    inputs, targets = supervised_batch(supervised_bank(config), config, np.random.default_rng(5))

    def loss(net) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.l1_loss(net(inputs).clamp(0, 255), targets))

    assert loss(tuned) < loss(start)
    card = (tmp_path / "run" / "nunet-dome.md").read_text()
    assert f"L2 to {target} targets" in card and f"| initial weights | {model_path} |" in card
    assert "| frame | 4 px (mean) around each normalised plane (training and use) |" in card
    with pytest.raises(Exception, match="supervised_target"):
        load_config(None, {"supervised_target": "peak"}).validate()
    with pytest.raises(Exception, match="supervised_loss"):
        load_config(None, {"supervised_loss": "l3"}).validate()


def test_supervised_strength_mixes_the_target_with_the_input():
    from dataclasses import replace

    from nunet.training.config import load_config
    from nunet.training.data import supervised_bank, supervised_batch

    config = load_config(
        None,
        {"supervised_weight": 1.0, "supervised_images": 1, "supervised_batch": 2, "crop": 32, "synthetic_content": 1},
    )
    bank = supervised_bank(config)
    inputs, full = supervised_batch(bank, config, np.random.default_rng(3))
    _, none = supervised_batch(bank, replace(config, supervised_strength=0.0), np.random.default_rng(3))
    _, half = supervised_batch(bank, replace(config, supervised_strength=0.5), np.random.default_rng(3))
    np.testing.assert_allclose(none.numpy(), inputs.clamp(0, 255).numpy(), atol=1e-4)
    np.testing.assert_allclose(half.numpy(), 0.5 * (full + none).numpy(), atol=1e-3)
    assert float((full - none).abs().max()) > 50


def test_supervised_stacks_add_every_plane_of_3d_stacks_to_the_bank():
    from nunet.training.config import STACK_DEPTH, load_config
    from nunet.training.data import supervised_bank

    base = {"supervised_weight": 1.0, "supervised_images": 1, "crop": 32, "synthetic_content": 1}
    flat = supervised_bank(load_config(None, {**base, "synthetic_modalities": ["sparse"]}))
    bank = supervised_bank(load_config(None, {**base, "synthetic_modalities": ["sparse"], "supervised_stacks": 1}))
    assert len(bank) == len(flat) + STACK_DEPTH and all(b.image.shape == (64, 64) for b in bank)
    planes = bank[len(flat) :]
    areas = [np.bincount(p.labels.ravel())[1:] for p in planes]
    # one nucleus seen in several planes: its cross-section changes from plane to plane
    assert len({tuple(a[: min(len(x) for x in areas)]) for a in areas}) > 1
    config = {**base, "synthetic_modalities": ["sparse"], "supervised_stacks": 1, "stack_defocus": 2.0}
    blurred = supervised_bank(load_config(None, config))[len(flat) :]
    assert all(np.array_equal(b.labels, p.labels) for b, p in zip(blurred, planes))  # the truth stays exact
    assert np.std([b.image for b in blurred]) < np.std([p.image for p in planes])


def test_stack_z_step_makes_the_nuclei_of_the_bank_stacks_flatter():
    from nunet.training.config import STACK_DEPTH, load_config
    from nunet.training.data import supervised_bank

    base = {
        "supervised_weight": 1.0,
        "supervised_images": 1,
        "crop": 32,
        "synthetic_content": 1,
        "synthetic_modalities": ["dense"],
    }

    def planes_per_nucleus(step: int) -> float:
        config = load_config(None, {**base, "supervised_stacks": 2, "stack_z_step": step, "stack_defocus": 1.0})
        bank = supervised_bank(config)[1:]
        assert len(bank) == 2 * STACK_DEPTH
        labels = [np.stack([b.labels for b in bank[i : i + STACK_DEPTH]]) for i in (0, STACK_DEPTH)]
        return float(np.mean([len(set(np.nonzero(stack == n)[0])) for stack in labels for n in np.unique(stack)[1:]]))

    assert planes_per_nucleus(2) < 0.7 * planes_per_nucleus(1)


def test_aspect_max_makes_the_nuclei_of_the_bank_longer_and_is_checked():
    from skimage.measure import regionprops

    from nunet.errors import NUNetError
    from nunet.training.config import load_config
    from nunet.training.data import supervised_bank

    base = {"supervised_weight": 1.0, "supervised_images": 6, "crop": 64, "synthetic_content": 1}
    base["synthetic_modalities"] = ["sparse"]

    def median_aspects(aspect_max: float, share: float = 1.0) -> list[float]:
        bank = supervised_bank(load_config(None, {**base, "aspect_max": aspect_max, "aspect_share": share}))
        aspects = []
        for b in bank:
            shapes = [p for p in regionprops(b.labels) if p.area > 30 and p.axis_minor_length > 0]
            aspects.append(float(np.median([p.axis_major_length / p.axis_minor_length for p in shapes])))
        return aspects

    assert np.median(median_aspects(0.0)) < 1.4 < 1.6 < np.median(median_aspects(3.0))  # sparse: 1.0-1.4
    half = median_aspects(3.0, share=0.5)  # the first half of the images elongated, the rest the modality's
    assert np.median(half[3:]) < 1.4 < 1.6 < np.median(half[:3])
    for bad in ({"aspect_max": 0.5}, {"aspect_max": 2.0, "aspect_share": 1.5}):
        with pytest.raises(NUNetError, match="aspect_max"):
            load_config(None, {**base, **bad})


def test_clean_share_leaves_crops_undegraded_and_is_checked():
    from nunet.core.preprocess import normalise_plane
    from nunet.training.config import load_config
    from nunet.training.data import degraded_crop, supervised_bank, supervised_batch

    image = synth_image("sparse", (48, 48), seed=5)
    x, labels = degraded_crop([image], 48, 11, np.random.default_rng(3), degrade=False)
    turns = [(k, flip) for k in range(4) for flip in (False, True)]

    def turned(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
        a = np.rot90(a, k)
        return a[:, ::-1] if flip else a

    # the crop is the bank image itself (here as large as the crop), only normalised, rotated and flipped
    k, flip = next((k, f) for k, f in turns if np.array_equal(turned(image.labels, k, f), labels))
    np.testing.assert_allclose(x, turned(normalise_plane(image.image.astype(np.float32)), k, flip), atol=1e-3)
    noisy, _ = degraded_crop([image], 48, 11, np.random.default_rng(3))
    assert not any(np.allclose(noisy, turned(normalise_plane(image.image), k, f), atol=1.0) for k, f in turns)

    base = {"supervised_weight": 1.0, "supervised_images": 1, "supervised_batch": 3, "crop": 48, "synthetic_content": 1}
    bank = supervised_bank(load_config(None, base))
    clean, _ = supervised_batch(bank, load_config(None, {**base, "clean_share": 1.0}), np.random.default_rng(4))
    degraded, _ = supervised_batch(bank, load_config(None, base), np.random.default_rng(4))
    smoothness = [float(np.abs(np.diff(b.numpy(), axis=-1)).mean()) for b in (clean, degraded)]
    assert smoothness[0] < smoothness[1]  # synthetic images without the degradations' photon noise
    with pytest.raises(NUNetError, match="clean_share"):
        load_config(None, {**base, "clean_share": 1.5})
