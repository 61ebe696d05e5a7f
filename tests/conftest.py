"""Shared fixtures: a real TorchScript model saved with save_model, registered in a temp folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

TEST_MODEL = "nunet-test"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A model folder holding ``nunet-test``: a seeded random NU-Net saved with save_model."""
    from nunet import save_model
    from nunet.core.model import untrained

    folder = tmp_path_factory.mktemp("models")
    save_model(
        untrained(seed=1),
        folder / f"{TEST_MODEL}.pt",
        name=TEST_MODEL,
        w=8.0,
        description="test fixture, random init",
        training={"steps": 0},
    )
    (folder / f"{TEST_MODEL}.md").write_text(f"# {TEST_MODEL}\n\nRandom init for tests.\n")
    return folder


@pytest.fixture(scope="session")
def model_path(model_dir) -> Path:
    return model_dir / f"{TEST_MODEL}.pt"


@pytest.fixture(autouse=True)
def _registry(model_dir, tmp_path_factory, monkeypatch):
    """Every test sees the fixture model through NUNET_MODEL_PATH, and an empty download folder
    (``nunet models fetch``'s) instead of the user's."""
    monkeypatch.setenv("NUNET_MODEL_PATH", str(model_dir))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.getbasetemp() / "xdg-data"))
    monkeypatch.delenv("NUNET_MODEL_URL", raising=False)


@pytest.fixture(scope="session")
def model(model_path):
    from nunet import load_model

    return load_model(model_path)


def blobs(shape: tuple[int, ...], seed: int = 0, n: int = 12) -> np.ndarray:
    """Gaussian blobs on a gradient with noise, float64, last two axes YX."""
    rng = np.random.default_rng(seed)
    h, w = shape[-2:]
    yy, xx = np.mgrid[0:h, 0:w]
    planes = []
    for _ in range(int(np.prod(shape[:-2], dtype=int))):
        plane = 20.0 + 30.0 * xx / w
        for cy, cx, r in zip(rng.uniform(0, h, n), rng.uniform(0, w, n), rng.uniform(3, 7, n)):
            plane = plane + 200.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        planes.append(plane + rng.normal(0, 5, (h, w)))
    return np.stack(planes).reshape(shape)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def held_out_training_loss(config, backbone, scale: float, seed: int):
    """The training loss (content + ``scale`` x morphological over every target) of a fixed batch drawn
    with ``seed``, as a function of the network: a tiny run's before/after check."""
    import torch

    from nunet.training.data import content_batch, content_datasets, mask_bank
    from nunet.training.losses import TargetGrams, content_loss, morphological_loss

    rng = np.random.default_rng(seed)
    grams = TargetGrams.from_masks(backbone, torch.from_numpy(mask_bank(config, rng)[:, None]))
    datasets = content_datasets(config)
    batch = content_batch(datasets, sorted(datasets) * 2, config.crop, rng)

    def loss(net) -> float:
        with torch.no_grad():
            out, content = backbone(net(batch)), backbone.content_features(batch)
            return float(content_loss(out[backbone.content_tap], content) + scale * morphological_loss(out, grams))

    return loss


def enhance_native(*args, **kwargs):
    """The filter at the image's own scale (no resize to the model's nucleus radius): for the tests
    that compare the output with the network's own forward pass, orientations or tiles."""
    from nunet import enhance

    return enhance(*args, radius="off", **kwargs)
