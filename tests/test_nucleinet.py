"""The nuclei-vgg perceptual network: its targets, a tiny real training, the shipped weights, its use in training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import held_out_training_loss
from nunet import load_model
from nunet.core.model import NUNet
from nunet.errors import NUNetError
from nunet.training.backbones.nucleinet import NucleiNet, find_weights, load_backbone
from nunet.training.config import TrainConfig, load_config
from nunet.training.data import degraded_crop
from nunet.training.loop import train
from nunet.training.nuclei_vgg import BackboneTraining, targets, train_backbone


def test_targets_mark_foreground_with_gaps_boundaries_and_centres():
    labels = np.zeros((16, 24), dtype=np.int32)
    labels[3:12, 3:12], labels[3:12, 12:21] = 1, 2  # two touching squares
    foreground, boundary, centre = targets(labels)
    assert foreground[7, 11] == 0 and foreground[7, 12] == 0 and foreground[7, 7] == 1  # the 1-px gap
    assert boundary[3, 7] == 1 and boundary[7, 11] == 1 and boundary[7, 7] == 0 and boundary[0, 0] == 0
    assert centre[7, 7] == pytest.approx(centre.max(), abs=0.05) and centre.max() > 0.8
    assert centre[0, 0] == 0 and centre[3, 3] < 0.2  # 0 outside, low at the corners


def _held_out_loss(net: NucleiNet, crops) -> float:
    inputs = torch.from_numpy(np.stack([x for x, _ in crops])[:, None])
    wanted = torch.from_numpy(np.stack([targets(labels) for _, labels in crops]))
    with torch.no_grad():
        return float(torch.nn.functional.binary_cross_entropy_with_logits(net(inputs), wanted))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    options = BackboneTraining(steps=40, batch=4, crop=48, images=2, stacks=1, seed=3)
    path = tmp_path_factory.mktemp("nuclei-vgg") / "tiny.pt"
    summary = train_backbone(options, path)
    return options, path, summary


@pytest.mark.slow
def test_tiny_backbone_training_lowers_its_loss_and_loads_frozen(tiny_weights):
    from nunet.training.data import supervised_bank

    options, path, summary = tiny_weights
    assert summary["steps"] == 40 and len(summary["log"]) == 40
    bank = supervised_bank(TrainConfig(crop=48, seed=99, supervised_images=1, supervised_stacks=0))
    crops = [degraded_crop(bank, 48, 99, np.random.default_rng(7)) for _ in range(6)]
    torch.manual_seed(options.seed)
    before = _held_out_loss(NucleiNet().eval(), crops)
    trained = NucleiNet()
    trained.load_state_dict(torch.load(path, weights_only=True)["state"])
    assert _held_out_loss(trained.eval(), crops) < before
    backbone = load_backbone(path)
    assert backbone.name == "nuclei-vgg" and backbone.weights.startswith("nunet.data.synth sha256:")
    assert not any(p.requires_grad for p in backbone.parameters())
    grey = torch.rand(2, 1, 32, 40) * 255
    features = backbone(grey)
    assert [f.shape[1:] for f in features] == [(32, 32, 40), (64, 16, 20), (128, 8, 10), (128, 4, 5)]
    torch.testing.assert_close(backbone.content_features(grey), features[1])
    # the backbone's taps are the trained network's (its first convolution computed from grey alone)
    torch.testing.assert_close(features[0], trained.stages[0]((grey / 255 - 0.5) / 0.25), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_nunet_trains_through_nuclei_vgg_and_exports(tiny_weights, tmp_path):
    _, weights, _ = tiny_weights
    values = {
        "name": "nunet-nv",
        "w": 2.0,
        "synthetic_content": 2,
        "synthetic_masks": 8,
        "content_batch": 2,
        "target_batch": 4,
        "crop": 48,
        "dry_run_steps": 3,
        "steps": 15,
        "device": "cpu",
        "backbone": "nuclei-vgg",
        "vgg_weights": str(weights),
        "output_dir": str(tmp_path / "run"),
    }
    config = load_config(None, values)
    model = load_model(train(config))
    assert model.metadata["training"]["backbone"] == "nuclei-vgg"
    scale = config.w * model.metadata["training"]["morph_scale"]
    total_loss = held_out_training_loss(config, load_backbone(weights), scale, seed=5)
    torch.manual_seed(config.seed)
    assert total_loss(model.module) < total_loss(NUNet().eval())
    assert "nuclei-vgg (nunet.data.synth sha256:" in (tmp_path / "run" / "nunet-nv.md").read_text()


def test_shipped_weights_find_nuclei_in_a_held_out_degraded_image():
    from nunet.core.preprocess import normalise_plane
    from nunet.data.degrade import Ranges, degrade
    from nunet.data.synth import synth_image

    path = find_weights()
    assert path.parent.name == "backbones"
    net = NucleiNet()
    net.load_state_dict(torch.load(path, weights_only=True)["state"])
    image = synth_image("sparse", (160, 160), seed=11)  # an evaluation seed
    done = degrade(image.image, image.labels, image.radius, 11, Ranges(max_side=160))
    side = (min(done.image.shape) // 8) * 8
    grey = torch.from_numpy(normalise_plane(done.image[:side, :side]).astype(np.float32))[None, None]
    with torch.no_grad():
        found = torch.sigmoid(net.eval()(grey))[0, 0].numpy() > 0.5
    truth = done.labels[:side, :side] > 0
    assert (found & truth).sum() / (found | truth).sum() > 0.5  # intersection over union


def test_weights_errors_name_the_file(tmp_path):
    missing = tmp_path / "none.pt"
    with pytest.raises(NUNetError, match="none.pt: no such nuclei-vgg weights file"):
        load_backbone(missing)
    other = tmp_path / "other.pt"
    torch.save({"something": torch.zeros(1)}, other)
    with pytest.raises(NUNetError, match="other.pt: not a nuclei-vgg weights file"):
        load_backbone(other)
    with pytest.raises(NUNetError, match="crop a multiple of 8"):
        BackboneTraining(crop=20).validate()
