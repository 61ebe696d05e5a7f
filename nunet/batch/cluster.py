"""Zarr volumes plane by plane, in this process or on a dask.distributed cluster, resumably.

One task filters one whole YX plane: InstanceNorm takes its statistics over the whole plane, so
a chunk that splits a plane would give another result (see :func:`filter_dask`, which rechunks
for that reason). Planes larger than a worker's memory are tiled inside the task, as on one
machine (:mod:`nunet.core.tiling`). A task reads its plane from the input store, loads the model
from its name or path (once per worker process: :func:`nunet.registry.models.load_model` caches it;
TorchScript modules cannot be pickled, so they never travel), filters with one torch thread
per worker thread, writes the plane into the output's level 0 and only then leaves a
completion record (an empty file named after the plane in ``OUTPUT/.nunet-done``). A restarted
run skips the planes with a record; a plane being written when the run was killed has none and
is filtered again. When every plane is done the pyramid and the OME metadata are written
(:func:`nunet.io.zarr.finish_output`) and the records are removed.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from nunet.core.size import sample_indices
from nunet.errors import PlaneReadError, UsageError
from nunet.io import Calibration
from nunet.io.zarr import ZarrSource
from nunet.options import FilterSettings

DONE_DIR = ".nunet-done"
#: The settings that change the output: a rerun resumes only when they and the input match.
RECORDED = ("model", "w", "axes", "channel", "precision", "invert", "augment", "radius", "dtype")


@dataclass(frozen=True)
class Plane:
    """One task: where a plane is read from and written to (indices of the leading axes)."""

    number: int  # position in the output's plane order; the completion record's name
    source: tuple[int, ...]  # index of the input's non-YX axes, in the input's axis order
    target: tuple[int, ...]  # index of the output's non-YX axes (NGFF order)


@dataclass(frozen=True)
class Run:
    """What :func:`filter_zarr` did."""

    planes: int
    filtered: int
    resumed: int  # planes found done by an earlier run
    seconds: float
    output: Path
    skipped: bool = False  # the output was finished already (and not overwritten)


def plan_planes(source: ZarrSource, channel: int | Sequence[int] | None) -> tuple[list[Plane], tuple[int, ...], str]:
    """The planes to filter, the output's shape and axes (NGFF order; the channel axis kept unless
    ``channel`` is a single int)."""
    from nunet.core.preprocess import select_channels
    from nunet.io.zarr import ngff_order

    lead_axes = "".join(a for a in source.axes if a not in "YX")
    lead_shape = tuple(n for a, n in zip(source.axes, source.shape) if a not in "YX")
    order, ordered = ngff_order(lead_axes)
    grid = np.transpose(np.arange(int(np.prod(lead_shape))).reshape(lead_shape), order)
    grid, out_lead = select_channels(grid, ordered, channel)
    planes = [
        Plane(number, tuple(int(i) for i in np.unravel_index(int(grid[index]), lead_shape)), tuple(index))
        for number, index in enumerate(np.ndindex(grid.shape))
    ]
    height, width = source.shape[source.axes.index("Y")], source.shape[source.axes.index("X")]
    return planes, grid.shape + (height, width), out_lead + "YX"


def read_plane(source: ZarrSource, plane: Plane, array=None) -> np.ndarray:
    """The YX plane of ``plane`` (whatever the input's chunks), as (Y, X)."""
    array = source.open_array() if array is None else array
    lead = iter(plane.source)
    index = tuple(slice(None) if a in "YX" else next(lead) for a in source.axes)
    try:
        data = np.asarray(array[index])
    except Exception as exc:  # zarr and its codecs raise many types for a corrupt or missing chunk
        where = ", ".join(f"{a}={i}" for a, i in zip((a for a in source.axes if a not in "YX"), plane.source))
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PlaneReadError(f"{source.path}: plane {where or 0}: cannot read its pixels ({first})") from None
    return data.T if source.axes.index("X") < source.axes.index("Y") else data


def filter_plane(source: ZarrSource, output: str, plane: Plane, settings: FilterSettings) -> int:
    """One task: read, filter, write one plane, then its completion record; returns its number."""
    import zarr

    from nunet.api import filter_planes_with, resolve_settings
    from nunet.core.runtime import num_threads
    from nunet.io import convert_dtype

    with num_threads(1):
        data = read_plane(source, plane)
        out = filter_planes_with(data[None], resolve_settings(settings))[0]  # resolved on the worker
    zarr.open_group(output, mode="r+")["s0"][plane.target] = convert_dtype(out, settings.dtype)
    (Path(output) / DONE_DIR / str(plane.number)).touch()
    return plane.number


def _record(source: ZarrSource, settings: FilterSettings) -> dict:
    values = asdict(settings)
    return {
        "input": str(source.path.resolve()),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if k in RECORDED},
    }


def prepare_output(
    source: ZarrSource, output: Path, settings: FilterSettings, overwrite: bool
) -> tuple[list[Plane], set[int]]:
    """Check the output before any compute and create or reopen it: the planes and those done.

    Raises
    ------
    UsageError
        The output is the input, a path nunet did not write, or (without ``overwrite``) an
        unfinished run of other settings or another input. A finished output (without
        ``overwrite``) has every plane done.
    """
    from nunet.batch.plan import check_writable_folder
    from nunet.io import zarr as zarr_io

    if output.resolve() == source.path.resolve():
        raise UsageError(f"{output}: output would overwrite the input; choose another name")
    planes, shape, axes = plan_planes(source, settings.channel)
    record = _record(source, settings)
    ngff = settings.ngff or source.ngff or zarr_io.DEFAULT_NGFF
    if output.exists():
        found = zarr_io.run_record(output)
        if found is None:
            raise UsageError(f"{output}: exists and was not written by nunet; it is never replaced")
        if not overwrite:
            if zarr_io.is_finished(output):
                return planes, {p.number for p in planes}
            if {k: found.get(k) for k in record} != record or found.get("ngff") != ngff:
                raise UsageError(
                    f"{output}: an unfinished run with another input or settings; rerun that command to resume "
                    "it, or use --overwrite to start again"
                )
            return planes, {int(p.name) for p in (output / DONE_DIR).glob("*") if p.name.isdigit()}
        shutil.rmtree(output)
    check_writable_folder(output.parent)
    zarr_io.create_output(output, shape, axes, settings.dtype, ngff, record)
    (output / DONE_DIR).mkdir()
    return planes, set()


@contextmanager
def _client(workers: int, scheduler: str | None) -> Iterator[object | None]:
    """A dask client on a new LocalCluster (``workers`` processes, one thread each), on an existing
    scheduler, or None (filter in this process)."""
    if not workers and not scheduler:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    one = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", env=one) as c,
        Client(c) as client,
    ):
        yield client


def filter_zarr(
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    settings: FilterSettings | None = None,
    *,
    workers: int = 0,
    scheduler: str | None = None,
    overwrite: bool = False,
    on_plane: Callable[[int, int], None] | None = None,
) -> Run:
    """Filter every plane of a zarr image into an OME-Zarr image with its pyramid; resumable.

    Parameters
    ----------
    input_path, output : path-like
        A zarr image (see :func:`nunet.io.zarr.open_zarr`) and the OME-Zarr group to write.
    settings : FilterSettings
        How to filter (model by name or path, channel, dtype, NGFF version: the input's unless
        ``settings.ngff`` says otherwise); the default model if None.
    workers : int
        Filter on a new ``LocalCluster`` of this many single-thread worker processes (0: here).
    scheduler : str, optional
        Address of an existing dask scheduler (overrides ``workers``); its workers must see
        both paths and have nunet installed.
    overwrite : bool
        Replace an output nunet wrote earlier (finished, or unfinished with other settings).
    on_plane : callable, optional
        ``on_plane(done, total)`` after each plane (``done`` counts resumed planes too).

    Raises
    ------
    UsageError
        Before any compute, for the cases of :func:`prepare_output`, a model that does not
        exist, or ``workers < 0``.
    """
    from nunet.io import zarr as zarr_io
    from nunet.registry.models import resolve_model

    settings = settings or FilterSettings()
    if workers < 0:
        raise UsageError(f"--workers: must be >= 0, got {workers}")
    source = zarr_io.open_zarr(input_path, settings.axes)
    output = Path(output)
    resolve_model(settings.model)  # an unknown model is an error before anything is written
    planes, done = prepare_output(source, output, settings, overwrite)
    todo = [p for p in planes if p.number not in done]
    if not todo and zarr_io.is_finished(output):
        return Run(len(planes), 0, len(done), 0.0, output, skipped=True)
    settings = with_radius(
        settings,
        lambda: np.stack([read_plane(source, planes[i]) for i in sample_indices(len(planes))]),
        source.calibration,
    )
    started, count = time.perf_counter(), len(done)
    report = on_plane or (lambda done, total: None)
    report(count, len(planes))
    with _client(workers, scheduler) as client:
        if client is None:
            for plane in todo:
                filter_plane(source, str(output), plane, settings)
                count += 1
                report(count, len(planes))
        else:
            from distributed import as_completed

            futures = client.map(filter_plane, [source] * len(todo), [str(output)] * len(todo), todo, settings=settings)
            try:
                for future in as_completed(futures):
                    future.result()
                    count += 1
                    report(count, len(planes))
            except BaseException:
                client.cancel(futures)
                raise
    zarr_io.finish_output(output, source.calibration)
    shutil.rmtree(output / DONE_DIR, ignore_errors=True)
    return Run(len(planes), len(todo), len(done), time.perf_counter() - started, output)


def filter_block(block: np.ndarray, settings: FilterSettings) -> np.ndarray:
    """Filter a block whose last two axes are Y and X, plane by plane (a dask ``map_blocks`` function)."""
    from nunet.api import filter_planes_with, resolve_settings
    from nunet.core.runtime import num_threads

    if block.size == 0:
        return np.zeros(block.shape, np.float32)
    with num_threads(1):
        planes = filter_planes_with(block.reshape((-1,) + block.shape[-2:]), resolve_settings(settings))
    return planes.reshape(block.shape)


def with_radius(
    settings: FilterSettings, sample: Callable[[], np.ndarray], calibration: "Calibration | None" = None
) -> FilterSettings:
    """``settings`` with the nucleus radius fixed in pixels for every task: estimated once from the
    ``sample()`` planes (``auto``, with the model's second look at them), or a length converted with
    ``calibration``; ``off`` if none. The second look runs here, before any task, on this machine's
    own device at fp32: the device the tasks ask for may exist only on the workers."""
    from nunet.api import radius_look, resolve_settings
    from nunet.core.size import image_radius

    calibration = calibration or Calibration()
    look = radius_look(resolve_settings(replace(settings, device="auto", precision="fp32")))
    pixels = image_radius(settings.radius, sample, settings.invert, calibration.pixel_width, calibration.unit, look)
    return settings.with_radius_pixels(pixels)


def filter_dask(array, settings: FilterSettings | None = None, calibration: "Calibration | None" = None):
    """A lazy filtered copy of a dask array whose last two axes are Y and X.

    The array is rechunked to whole planes first (one chunk per YX plane): filtering chunks that
    split a plane would change the result. Returns float32 in [0, 1], computed wherever dask
    computes (a distributed client included); the model is loaded inside the tasks. The nucleus
    radius (``settings.radius``) is fixed here, once for the whole array: ``auto`` reads up to four
    planes now to estimate it; a length needs the ``calibration``.
    """
    settings = settings or FilterSettings()
    lead = array.shape[:-2]
    settings = with_radius(
        settings,
        lambda: np.stack(
            [np.asarray(array[np.unravel_index(i, lead)]) for i in sample_indices(int(np.prod(lead)))]
        ).astype(np.float32),
        calibration,
    )
    whole = array.rechunk((1,) * (array.ndim - 2) + (-1, -1))
    meta = np.empty((0,) * array.ndim, np.float32)
    return whole.map_blocks(filter_block, settings=settings, dtype=np.float32, meta=meta)
