"""NU-Net in a Fiji/ImageJ session driven from Python (pyimagej, scyjava): the public face of
:mod:`nunet.integrations.fiji`."""

from nunet.integrations.fiji import (
    classpath,
    filter_imageplus,
    from_imageplus,
    register,
    run_macro,
    start,
    to_imageplus,
    unregister,
    user_imagej_dir,
)

__all__ = [
    "classpath",
    "filter_imageplus",
    "from_imageplus",
    "register",
    "run_macro",
    "start",
    "to_imageplus",
    "unregister",
    "user_imagej_dir",
]
