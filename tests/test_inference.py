"""enhance(): dtypes, shapes, axes, channels, batching, model files, invert, augment, immutability."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import blobs, enhance_native
from nunet import enhance
from nunet.core.preprocess import LUMA, normalise_plane
from nunet.errors import AxesError, ModelError, UsageError
from nunet.io import Image


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64, bool])
def test_any_numeric_dtype_gives_float_in_unit_range(model, dtype):
    img = blobs((40, 52))
    img = (img > 100) if dtype is bool else (img / img.max() * 200).astype(dtype)
    out = enhance(img, model)
    assert out.dtype == np.float32 and out.shape == (40, 52)
    assert 0.0 <= out.min() and out.max() <= 1.0 and out.std() > 0.01


@pytest.mark.parametrize("shape", [(37, 53), (5, 6), (1, 30), (64, 64)])
def test_exact_spatial_shape(model, shape):
    assert enhance(blobs(shape), model).shape == shape


def test_padding_is_reflection_not_resampling(model):
    img = blobs((50, 61))
    out = enhance_native(img, model, percentiles=(0, 100))
    padded = enhance_native(np.pad(img, ((0, 2), (0, 3)), mode="reflect"), model, percentiles=(0, 100))
    # both become the same 52x64 plane (reflection keeps min and max), so the crops agree
    np.testing.assert_allclose(out, padded[:50, :61], atol=1e-5)


def test_invariant_to_gain_and_offset(model):
    img = blobs((48, 48))
    np.testing.assert_allclose(enhance(img, model), enhance(img * 7.5 + 300, model), atol=1e-4)


def test_constant_plane_is_fine(model):
    out = enhance(np.full((16, 16), 9, np.uint16), model)
    assert np.isfinite(out).all()


def test_nan_input_is_refused(model):
    img = blobs((16, 16))
    img[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        enhance(img, model)


def test_input_is_not_modified(model):
    img = blobs((2, 32, 32)).astype(np.float32)
    before = img.copy()
    enhance(img, model, progress=True)
    np.testing.assert_array_equal(img, before)


def test_hyperstack_axes_and_channels_filtered_independently(model):
    img = blobs((2, 3, 2, 24, 28))  # T Z C Y X
    out = enhance(img, model, axes="TZCYX")
    assert out.shape == img.shape
    np.testing.assert_allclose(out[1, 2, 1], enhance(img[1, 2, 1], model), atol=1e-5)


def test_channel_selection(model):
    img = blobs((3, 24, 28))
    one = enhance(img, model, axes="CYX", channel=1)
    assert one.shape == (24, 28)
    np.testing.assert_allclose(one, enhance(img[1], model), atol=1e-5)
    two = enhance(img, model, axes="CYX", channel=[0, 2])
    assert two.shape == (2, 24, 28)
    with pytest.raises(AxesError, match="out of range"):
        enhance(img, model, axes="CYX", channel=5)
    with pytest.raises(AxesError, match="no C axis"):
        enhance(img, model, axes="ZYX", channel=0)


def test_rgb_becomes_grey(model):
    rgb = np.random.default_rng(0).integers(0, 255, (30, 34, 3)).astype(np.uint8)
    out = enhance(rgb, model)
    assert out.shape == (30, 34)
    np.testing.assert_allclose(out, enhance(rgb.astype(np.float32) @ LUMA, model), atol=1e-5)


def test_axes_mismatch_is_a_clear_error(model):
    with pytest.raises(AxesError, match="axes 'TYX' has 3 letters but the data has 2 dimensions"):
        enhance(blobs((16, 16)), model, axes="TYX")
    with pytest.raises(AxesError, match="unknown axis"):
        enhance(blobs((2, 16, 16)), model, axes="QYX")


def test_image_object_keeps_axes(model):
    img = Image(blobs((2, 20, 20)), "TYX")
    assert enhance(img, model).shape == (2, 20, 20)


def test_batch_size_does_not_change_output(model):
    img = blobs((5, 32, 36))
    np.testing.assert_allclose(enhance(img, model, batch_size=1), enhance(img, model, batch_size=3), atol=1e-5)


def test_model_by_registered_name_and_unknown_name(model):
    img = blobs((16, 16))
    np.testing.assert_allclose(enhance(img, "nunet-test"), enhance(img, model), atol=1e-6)
    with pytest.raises(ModelError, match="unknown model 'nope'; available: .*nunet-test"):
        enhance(img, "nope")


def test_bf16_stays_close_to_fp32(model):
    img = blobs((64, 64))
    ref, low = enhance(img, model), enhance(img, model, precision="bf16")
    assert np.corrcoef(ref.ravel(), low.ravel())[0, 1] > 0.99
    with pytest.raises(ValueError, match="fp16"):
        enhance(img, model, precision="fp16", device="cpu")


def test_blend_weights_picks_bracketing_models():
    from nunet.registry.models import blend_weights

    family = [("w10", 10.0), ("w5", 5.0), ("w8", 8.0)]
    assert blend_weights(8.0, family) == [("w8", 1.0)]
    (lo, a), (hi, b) = blend_weights(9.5, family)
    assert (lo, hi) == ("w8", "w10") and a == pytest.approx(0.25) and b == pytest.approx(0.75)
    with pytest.raises(ModelError, match="outside the range"):
        blend_weights(4.0, family)


def test_w_blends_registered_models(tmp_path, monkeypatch):
    from nunet import save_model
    from nunet.core.model import untrained

    # w values above the shipped models' (5..10), so the bracketing pair is these two
    for seed, w in ((2, 11.0), (3, 21.0)):
        save_model(untrained(seed), tmp_path / f"test-w{w:g}.pt", name=f"test-w{w:g}", w=w)
    monkeypatch.setenv("NUNET_MODEL_PATH", str(tmp_path))
    img = blobs((32, 40))
    a, b = enhance(img, "test-w11"), enhance(img, "test-w21")
    np.testing.assert_allclose(enhance(img, "test-w11", w=13.0), 0.8 * a + 0.2 * b, atol=1e-5)
    np.testing.assert_allclose(enhance(img, "test-w21", w=21), b, atol=1e-6)
    with pytest.raises(UsageError, match="--w: w=22 is outside"):
        enhance(img, "test-w11", w=22)


def test_w_blends_only_within_the_models_family(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from nunet import save_model
    from nunet.cli import app
    from nunet.core.model import untrained
    from nunet.registry.models import family_of

    for seed, w, family in ((2, 0.5, "new"), (3, 1.0, "new"), (4, 11.0, None)):
        name = f"{family or 'old'}-{w:g}"
        save_model(untrained(seed), tmp_path / f"{name}.pt", name=name, w=w, **({"family": family} if family else {}))
    save_model(untrained(5), tmp_path / "single.pt", name="single", w=None)
    monkeypatch.setenv("NUNET_MODEL_PATH", str(tmp_path))
    assert family_of("new-1") == [("new-0.5", 0.5), ("new-1", 1.0)]
    assert ("old-11", 11.0) in family_of("old-11") and ("new-1", 1.0) not in family_of("old-11")
    img = blobs((32, 40))
    a, b = enhance(img, "new-0.5"), enhance(img, "new-1")
    np.testing.assert_allclose(enhance(img, "new-1", w=0.75), 0.5 * a + 0.5 * b, atol=1e-5)
    with pytest.raises(UsageError, match="--w: model 'single' has no family of strengths"):
        enhance(img, "single", w=0.75)
    result = CliRunner().invoke(app, ["filter", "x.tif", str(tmp_path / "o.tif"), "-m", "new-1", "--w", "3"])
    assert result.exit_code == 2 and "--w: w=3 is outside the range" in result.output


def test_invert_filters_the_flipped_image(model):
    img = blobs((36, 40))
    np.testing.assert_allclose(enhance(img, model, invert=True), enhance(img.max() - img, model), atol=1e-5)
    assert np.abs(enhance(img, model, invert=True) - enhance(img, model)).max() > 0.05


def test_device_side_normalisation_equals_numpy():
    """The CUDA path's normalisation (run here on CPU tensors) matches normalise_plane plane by plane."""
    from nunet.core.preprocess import normalise_planes_torch

    planes = np.stack([blobs((40, 36), seed=s) * (s + 1) + 7 * s for s in range(3)] + [np.full((40, 36), 5.0)])
    got = normalise_planes_torch(torch.from_numpy(planes.astype(np.float32))).numpy()
    for plane, out in zip(planes, got):
        np.testing.assert_allclose(out, normalise_plane(plane), atol=1e-3)
    bad = torch.from_numpy(planes.astype(np.float32))
    bad[1, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        normalise_planes_torch(bad)


@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize(("frame", "fill"), [(0, "zero"), (6, "zero"), (6, "edge"), (6, "mean")])
def test_device_side_preparation_equals_the_numpy_path(invert, frame, fill):
    """What CUDA runs (normalise, invert, reflect-pad or frame in torch), here on the CPU, equals the NumPy path."""
    from nunet.core.planes import prepare_batch, prepare_batch_torch
    from nunet.core.preprocess import Frame

    planes = np.stack([blobs((37, 42), seed=s) for s in range(3)])
    expected = prepare_batch(planes, (0.1, 99.9), invert, Frame(frame, fill), "cpu")
    got = prepare_batch_torch(planes, (0.1, 99.9), invert, Frame(frame, fill), "cpu")
    assert got.shape == expected.shape == ((3, 1, 40, 44) if not frame else (3, 1, 52, 56))
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)


def test_a_model_file_carries_its_own_normalisation(tmp_path):
    """The percentiles a model was trained with are read from its metadata and used."""
    from nunet import load_model, save_model
    from nunet.core.model import untrained
    from nunet.core.modelfile import NORMALISATION

    img = blobs((40, 44))
    path = save_model(
        untrained(seed=1),
        tmp_path / "p.pt",
        name="p",
        w=None,
        normalisation={**NORMALISATION, "percentiles": [2.0, 98.0]},
    )
    model = load_model(path)
    assert model.percentiles == (2.0, 98.0)
    np.testing.assert_array_equal(enhance(img, model), enhance(img, "nunet-test", percentiles=(2.0, 98.0)))
    assert np.abs(enhance(img, model) - enhance(img, "nunet-test")).max() > 1e-3


def test_augment_follows_rotations_and_mirrors_of_the_input(model):
    """Test-time augmentation averages the eight orientations, so its output turns with the input;
    the network alone does not."""
    img = blobs((48, 64), seed=5, n=20)  # sides multiple of 4: no padding, so the symmetry is exact
    out = enhance_native(img, model, augment=True)
    for turn, undo in ((lambda a: np.rot90(a), lambda a: np.rot90(a, -1)), (np.fliplr, np.fliplr)):
        turned = np.ascontiguousarray(turn(img))
        np.testing.assert_allclose(undo(enhance_native(turned, model, augment=True)), out, atol=1e-5)
        assert np.abs(undo(enhance_native(turned, model)) - enhance_native(img, model)).max() > 1e-2
    oriented = [np.rot90(a, k) for a in (img, np.fliplr(img)) for k in range(4)]
    outputs = [np.rot90(enhance_native(np.ascontiguousarray(a), model), -(k % 4)) for k, a in enumerate(oriented)]
    mean = np.mean([o if k < 4 else np.fliplr(o) for k, o in enumerate(outputs)], axis=0)
    np.testing.assert_allclose(out, mean, atol=1e-5)


def _framed_model(folder, fill: str):
    """The fixture network saved as a model trained with an 8-px frame (metadata ``frame_pad``, ``frame_fill``)."""
    from nunet import load_model, save_model
    from nunet.core.model import untrained

    path = folder / f"framed-{fill}.pt"
    save_model(untrained(seed=1), path, name="framed", w=None, frame_pad=8, frame_fill=fill)
    return load_model(path)


@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize("fill", ["zero", "edge", "mean"])
def test_a_framed_model_sees_the_plane_inside_its_frame(model, tmp_path, fill, invert):
    from nunet.core.preprocess import Frame, crop_plane, frame_plane, invert_normalised

    framed_model = _framed_model(tmp_path, fill)
    img = blobs((37, 45), seed=2)
    normalised = normalise_plane(img)
    inner = invert_normalised(normalised) if invert else normalised
    x = frame_plane(inner, Frame(8, fill))
    assert x.shape == (56, 64)
    border = {"zero": 0.0, "edge": inner[0, 0], "mean": inner.mean()}[fill]
    assert np.allclose(x[:8, :8], border) and np.allclose(x[45:, 53:], {"edge": inner[-1, -1]}.get(fill, border))
    with torch.inference_mode():
        expected = crop_plane(framed_model(torch.from_numpy(x)[None, None]), 37, 45, offset=8)
    expected = expected.clamp(0, 255).div(255)[0, 0].numpy()
    out = enhance_native(img, framed_model, invert=invert)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(enhance_native(img, framed_model, invert=invert, tile_size=16), out, atol=1e-5)
    assert np.abs(out - enhance_native(img, model, invert=invert)).max() > 0.05  # the same weights, reflect-padded


def test_float64_values_beyond_float32_range_are_filtered(model):
    """Finite float64 data too large for float32 is normalised in float64, not refused as infinite."""
    img = blobs((32, 40))
    out = enhance_native(img * 1e300, model)
    np.testing.assert_allclose(out, enhance_native(img, model), atol=1e-4)
    np.testing.assert_allclose(enhance(img * 1e300, model), enhance(img, model), atol=1e-4)  # the estimate too
    with pytest.raises(ValueError, match="NaN or infinite"):
        enhance_native(np.full((16, 16), np.inf), model)
