"""NU-Net in napari: the "NU-Net filter" dock widget and the sample images (an npe2 plugin, manifest
``napari.yaml`` beside this module; ``pip install 'nunet-filter[napari]'``).

The widget filters the chosen image layer as :func:`nunet.enhance` would (the same settings, the
nucleus radius estimated once for the whole layer) and adds the result as a new layer named after
the input, with its scale, translate, units and axis labels, so it overlays exactly. The compute
runs off the UI thread (napari's ``thread_worker``), plane by plane, with a progress bar and a
cancel button; a layer backed by a dask or zarr array (a big OME-Zarr opened with napari-ome-zarr)
is read one plane at a time, never whole (the output, float32, is held in memory). Problems (an
unknown model, NaN pixels, a bad option, out of memory) are one notification each; the viewer
stays usable.

Axes: the last two axes of a layer are Y and X (an RGB layer's samples are made grey); a leading
axis whose label names channels (``c``, ``ch``, ``channel``) is the channel axis, others are
filtered plane by plane whatever they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from nunet.errors import ImageValueError, NUNetError, UsageError
from nunet.options import DEFAULT_MODEL, FilterSettings, Precision

if TYPE_CHECKING:
    import napari

#: Layer axis labels taken for a channel axis.
CHANNEL_LABELS = ("c", "ch", "channel", "channels")
DEVICES = ("auto", "cpu", "cuda", "mps")


def layer_axes(layer: "napari.layers.Image") -> str:
    """ImageJ axes for a layer's data: ``C`` for a leading axis whose label names channels, the other
    leading axes ``Z`` or ``TZ`` (each plane is filtered on its own either way), then ``YX`` (``YXS``
    for RGB)."""
    spatial = "YXS" if layer.rgb else "YX"
    lead = _base_data(layer).ndim - len(spatial)
    labels = [str(label).lower() for label in getattr(layer, "axis_labels", ())][:lead]
    channel = next((i for i, label in enumerate(labels) if label in CHANNEL_LABELS), None)
    count = lead - (channel is not None)
    if count > 2:
        raise UsageError(f"layer '{layer.name}': {lead} axes before Y and X; nunet takes at most T, Z and C")
    others = iter(("", "Z", "TZ")[count])
    return "".join("C" if i == channel else next(others) for i in range(lead)) + spatial


def _base_data(layer: "napari.layers.Image"):
    """The layer's full-resolution array (level 0 of a multiscale layer), never loaded."""
    return layer.data[0] if layer.multiscale else layer.data


def check_layer(layer: "napari.layers.Image") -> None:
    """Refuse what nunet cannot filter, before any compute (a UsageError naming the layer)."""
    if layer.rgb and _base_data(layer).shape[-1] == 4:
        raise UsageError(f"layer '{layer.name}': RGBA; its alpha is not image data (make it RGB or grey first)")
    if not np.issubdtype(np.dtype(_base_data(layer).dtype), np.number):
        raise UsageError(f"layer '{layer.name}': unsupported pixel type {_base_data(layer).dtype}")


def filter_layer_planes(
    layer: "napari.layers.Image", settings: FilterSettings
) -> Iterator[tuple[int, int] | dict[str, Any]]:
    """Filter a layer plane by plane: yields ``(done, total)`` after each plane, then the new layer's
    data and attributes (``{"data": ..., "meta": {...}}``). The result equals :func:`nunet.enhance`
    on the layer's array with ``settings`` (one radius for the whole layer)."""
    from nunet.api import filter_planes_with, nucleus_radius, resolve_settings
    from nunet.core.preprocess import to_grey
    from nunet.io import Calibration, Image, check_axes
    from nunet.registry import load_model

    check_layer(layer)
    data = _base_data(layer)
    axes = check_axes(layer_axes(layer), data.shape, f"layer '{layer.name}'")
    settings = resolve_settings(settings)
    calibration = Calibration(float(layer.scale[-1]), float(layer.scale[-2]), _unit(layer))
    lead = [a for a in axes if a not in "YXS"]
    picks = _channels(axes, data.shape, settings.channel)
    keep_c = "C" in lead and not isinstance(settings.channel, int)
    if isinstance(data, np.ndarray):
        image = Image(data, axes, calibration)
        radius = nucleus_radius(image, settings)
    else:  # a lazy (dask, zarr) array: the radius from up to four planes, as nunet.cluster does
        radius = _lazy_radius(data, axes, picks, settings, calibration)
    fixed = settings.with_radius_pixels(radius)
    if fixed.w is None:  # one model: loaded once here, not looked up again for every plane
        fixed = replace(fixed, model=load_model(fixed.model, fixed.device))
    kept = [a for a in lead if a != "C" or keep_c]
    shape = [len(picks) if a == "C" else data.shape[axes.index(a)] for a in kept]
    out = np.empty([*shape, data.shape[axes.index("Y")], data.shape[axes.index("X")]], np.float32)
    others = [data.shape[axes.index(a)] for a in lead if a != "C"]
    total, done = len(picks) * int(np.prod(others, dtype=int)), 0
    for position, c in enumerate(picks):
        for index in np.ndindex(*others):
            source, target = iter(index), iter(index)
            plane = np.asarray(data[tuple(c if a == "C" else next(source) for a in lead)])
            grey = to_grey(plane, "YXS" if layer.rgb else "YX")[0]
            if not np.issubdtype(grey.dtype, np.integer) and not np.isfinite(grey).all():
                raise ImageValueError(f"layer '{layer.name}': plane {done + 1} contains NaN or infinite values")
            result = filter_planes_with(grey[None], fixed, calibration)[0]
            out[tuple(position if a == "C" else next(target) for a in kept)] = result
            done += 1
            yield done, total
    yield {"data": out, "meta": _meta(layer, [i for i, a in enumerate(axes) if a in kept or a in "YX"])}


def _guarded(layer: "napari.layers.Image", settings: FilterSettings) -> Iterator[tuple[int, int] | dict[str, Any]]:
    """:func:`filter_layer_planes` with any failure yielded as ``{"error": one line}`` (a NUNetError's
    message, else the exception's type and first line): the viewer shows it and stays usable."""
    try:
        yield from filter_layer_planes(layer, settings)
    except Exception as exc:  # noqa: BLE001 (out of memory, a torch error: shown, never raised into Qt)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if isinstance(exc, ImageValueError):  # pixels: name the layer they are in
            text = f"layer '{layer.name}': {text}"
        yield {"error": text if isinstance(exc, NUNetError) else f"{type(exc).__name__}: {text}"}


def _channels(axes: str, shape: tuple[int, ...], channel) -> list[int]:
    from nunet.core.preprocess import channel_picks

    if "C" not in axes:
        if channel is not None:
            raise UsageError("channel: this layer has no channel axis (its axis labels name none)")
        return [0]
    if channel is None:
        return list(range(shape[axes.index("C")]))
    return channel_picks(axes, shape, channel)


def _lazy_radius(data, axes: str, channels: list[int], settings: FilterSettings, calibration) -> float | None:
    """The nucleus radius of a lazy array from up to four of its planes (of the chosen channels)."""
    from nunet.api import radius_look
    from nunet.core.preprocess import to_grey
    from nunet.core.size import image_radius, sample_indices

    lead = [a for a in axes if a not in "YXS"]
    others = [data.shape[axes.index(a)] for a in lead if a != "C"]
    planes = [(c, index) for c in channels for index in np.ndindex(*others)]

    def sample() -> np.ndarray:
        picked = []
        for i in sample_indices(len(planes)):
            c, index = planes[i]
            it = iter(index)
            plane = np.asarray(data[tuple(c if a == "C" else next(it) for a in lead)])
            picked.append(to_grey(plane, "YXS" if axes.endswith("S") else "YX")[0])
        return np.stack(picked)

    look = radius_look(settings)
    return image_radius(settings.radius, sample, settings.invert, calibration.pixel_width, calibration.unit, look)


def _unit(layer) -> str | None:
    units = getattr(layer, "units", None)
    if not units:
        return None
    unit = str(units[-1])
    return None if unit in ("pixel", "") else unit.replace("micrometer", "micron")


def _meta(layer, kept: list[int]) -> dict[str, Any]:
    """The new layer's name and geometry: the input's, on the axes the output keeps."""
    meta: dict[str, Any] = {
        "name": f"{layer.name} (NU-Net)",
        "scale": [layer.scale[i] for i in kept],
        "translate": [layer.translate[i] for i in kept],
        "colormap": "gray",
        "contrast_limits": (0.0, 1.0),
    }
    labels = getattr(layer, "axis_labels", None)
    if labels is not None:
        meta["axis_labels"] = [labels[i] for i in kept]
    units = getattr(layer, "units", None)
    if units is not None:
        meta["units"] = [units[i] for i in kept]
    return meta


def FilterWidget(viewer: "napari.viewer.Viewer"):
    """The "NU-Net filter" dock widget (a magicgui Container) for ``viewer``."""
    import napari
    from magicgui.widgets import (
        CheckBox,
        ComboBox,
        Container,
        FileEdit,
        FloatSpinBox,
        LineEdit,
        ProgressBar,
        PushButton,
        create_widget,
    )

    from nunet.registry import list_models

    names = [e.name for e in list_models()] or [DEFAULT_MODEL]
    image = create_widget(annotation=napari.layers.Image, name="image", label="image")
    model = ComboBox(
        name="model", label="model", choices=names, value=DEFAULT_MODEL if DEFAULT_MODEL in names else names[0]
    )
    model_file = FileEdit(name="model_file", label="or file", filter="*.pt", value="")
    w = FloatSpinBox(name="w", label="w (0: the model's)", min=0.0, max=20.0, step=0.05, value=0.0)
    radius = LineEdit(
        name="radius", label="nucleus radius", value="auto", tooltip="auto, pixels (12), a length (3.5um) or off"
    )
    channel = LineEdit(
        name="channel", label="channel", value="all", tooltip="all, or 0-based channel numbers (0 or 0,2)"
    )
    invert = CheckBox(name="invert", label="dark nuclei (invert)", value=False)
    augment = CheckBox(name="augment", label="test-time augmentation", value=False)
    device = ComboBox(name="device", label="device", choices=DEVICES, value="auto")
    precision = ComboBox(name="precision", label="precision", choices=[p.value for p in Precision], value="fp32")
    run = PushButton(name="run", text="Filter")
    cancel = PushButton(name="cancel", text="Cancel", enabled=False)
    progress = ProgressBar(name="progress", label="progress", value=0, max=1)
    widget = Container(
        widgets=[
            image,
            model,
            model_file,
            w,
            radius,
            channel,
            invert,
            augment,
            device,
            precision,
            run,
            cancel,
            progress,
        ]
    )
    widget.label = "NU-Net filter"
    state: dict[str, Any] = {"worker": None, "added": None}

    def settings() -> FilterSettings:
        chosen = str(model_file.value) if str(model_file.value) not in ("", ".") else model.value
        return FilterSettings(
            model=chosen,
            w=w.value or None,
            radius=radius.value,
            channel=None if channel.value.strip().lower() in ("", "all") else channel.value,
            invert=invert.value,
            augment=augment.value,
            device=device.value,
            precision=precision.value,
        )

    def finished() -> None:
        run.enabled, cancel.enabled = True, False
        state["worker"] = None

    def start() -> None:
        from napari.qt.threading import thread_worker
        from napari.utils.notifications import show_error

        layer = image.value
        if layer is None:
            show_error("NU-Net filter: open an image first")
            return
        try:
            chosen = settings()  # the layer itself is checked in the worker, before any compute
        except NUNetError as exc:
            show_error(f"NU-Net filter: {exc}")
            return
        worker = thread_worker(_guarded, start_thread=False)(layer, chosen)

        def on_yield(value) -> None:
            if isinstance(value, tuple):
                progress.max, progress.value = value[1], value[0]
            elif "error" in value:
                show_error(f"NU-Net filter: {value['error']}")
            else:
                state["added"] = viewer.add_image(value["data"], **value["meta"])

        worker.yielded.connect(on_yield)
        worker.finished.connect(finished)
        state["worker"] = worker
        run.enabled, cancel.enabled = False, True
        progress.value = 0
        worker.start()

    def stop() -> None:
        if state["worker"] is not None:
            state["worker"].quit()

    run.changed.connect(start)
    cancel.changed.connect(stop)
    widget.state = state  # for tests and scripts: the running worker and the last layer added
    widget.start = start
    return widget


def sample_nuclei() -> list[tuple[np.ndarray, dict[str, Any]]]:
    """File > Open Sample > NU-Net: nunet's synthetic time-lapse of nucleus stacks (T, Z, Y, X)."""
    return [_sample("synthetic_nuclei_TZYX.tif", ("t", "z", "y", "x"))]


def sample_nuclei_2d() -> list[tuple[np.ndarray, dict[str, Any]]]:
    """File > Open Sample > NU-Net: one 16-bit plane of synthetic nuclei."""
    return [_sample("synthetic_nuclei_2d_uint16.tif", ("y", "x"))]


def _sample(name: str, labels: tuple[str, ...]) -> tuple[np.ndarray, dict[str, Any]]:
    from importlib import resources

    from nunet.io import read_image

    path = resources.files("nunet.integrations.sample_images").joinpath(name)
    image = read_image(str(path))
    cal = image.calibration
    scale = [1.0] * (image.data.ndim - 2) + [cal.pixel_height, cal.pixel_width]
    if "Z" in image.axes and cal.z_spacing:
        scale[image.axes.index("Z")] = cal.z_spacing
    return image.data, {"name": name.rsplit(".", 1)[0], "scale": scale, "axis_labels": labels}
