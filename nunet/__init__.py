"""NU-Net: a smart filter for nuclei and cells, a drop-in replacement for DoG/LoG.

Public API (torch is imported on first use, so ``import nunet`` is instant)::

    from nunet import enhance, load_model, list_models, save_model, NUNet
    out = enhance(image, model="nunet-v11", axes="TZYX")
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from nunet._version import __version__

_EXPORTS = {
    "NUNet": "nunet.core.model",
    "save_model": "nunet.core.modelfile",
    "LoadedModel": "nunet.core.modelfile",
    "load_model": "nunet.registry",
    "list_models": "nunet.registry",
    "enhance": "nunet.api",
    "filter_image": "nunet.api",
    "Image": "nunet.io",
    "Calibration": "nunet.io",
    "read_image": "nunet.io",
    "write_image": "nunet.io",
    "NUNetError": "nunet.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nunet' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
