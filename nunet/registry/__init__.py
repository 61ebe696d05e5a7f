"""Models by name: the folders searched, families and their blend weights, loading with a cache
(:mod:`nunet.registry.models`)."""

from nunet.registry.models import (
    ENV_VAR,
    ModelEntry,
    blend_weights,
    clear_cache,
    family_of,
    list_models,
    load_count,
    load_model,
    model_dirs,
    resolve_model,
)

__all__ = [
    "ENV_VAR",
    "ModelEntry",
    "blend_weights",
    "clear_cache",
    "family_of",
    "list_models",
    "load_count",
    "load_model",
    "model_dirs",
    "resolve_model",
]
