"""The napari plugin in a real viewer (napari's make_napari_viewer, pytest-qt, Xvfb): the widget's
layers equal nunet.enhance, keep the input's geometry, read lazy layers plane by plane, report bad
layers as one notification, can be cancelled; the sample data opens."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_MODEL, blobs

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.napari


@pytest.fixture()
def widget(make_napari_viewer, monkeypatch, qtbot):
    """The dock widget on a fresh viewer, with notifications recorded instead of shown."""
    from nunet.integrations.napari_widget import FilterWidget

    viewer = make_napari_viewer()
    errors: list[str] = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    dock = FilterWidget(viewer)
    viewer.window.add_dock_widget(dock, name="NU-Net filter")
    dock.model.value = TEST_MODEL
    dock.device.value = "cpu"
    return viewer, dock, errors


def _run(dock, qtbot, layer) -> None:
    dock.image.value = layer
    dock.start()
    qtbot.waitUntil(lambda: dock.state["worker"] is None, timeout=120_000)


def test_a_2d_layer_is_filtered_as_enhance_and_overlays_the_input(widget, qtbot):
    viewer, dock, errors = widget
    image = blobs((70, 90))
    layer = viewer.add_image(image, name="cells", scale=(0.5, 0.25), translate=(3.0, -2.0))
    _run(dock, qtbot, layer)
    out = viewer.layers["cells (NU-Net)"]
    assert not errors
    np.testing.assert_array_equal(out.data, nunet_enhance(image, axes="YX"))
    assert tuple(out.scale) == (0.5, 0.25) and tuple(out.translate) == (3.0, -2.0)


def test_a_stack_and_one_channel_of_a_multichannel_layer(widget, qtbot):
    viewer, dock, errors = widget
    stack = blobs((3, 40, 48))
    layer = viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.5))
    _run(dock, qtbot, layer)
    np.testing.assert_array_equal(viewer.layers["stack (NU-Net)"].data, nunet_enhance(stack, axes="ZYX"))
    assert tuple(viewer.layers["stack (NU-Net)"].scale) == (2.0, 0.5, 0.5)
    channels = blobs((2, 3, 36, 40), seed=4)
    layer = viewer.add_image(channels, name="two", axis_labels=("c", "z", "y", "x"))
    dock.channel.value = "1"
    _run(dock, qtbot, layer)
    out = viewer.layers["two (NU-Net)"]
    np.testing.assert_array_equal(out.data, nunet_enhance(channels, axes="CZYX", channel=1))
    assert out.data.shape == (3, 36, 40) and tuple(out.axis_labels) == ("z", "y", "x")
    assert not errors


def test_a_lazy_layer_is_read_one_plane_at_a_time(widget, qtbot):
    import dask.array as da

    viewer, dock, errors = widget
    volume = blobs((4, 40, 44), seed=2).astype(np.float32)

    class Reads:
        """An array that records every read (dask reads through it, chunk by chunk)."""

        shape, dtype, ndim = volume.shape, volume.dtype, volume.ndim
        planes_read: list[int] = []

        def __getitem__(self, key):
            block = volume[key]
            self.planes_read.append(block.shape[0] if block.ndim == 3 else 1)
            return block

    lazy = da.from_array(Reads(), chunks=(1, 40, 44))
    layer = viewer.add_image(lazy, name="lazy", contrast_limits=(0.0, 300.0))
    Reads.planes_read.clear()
    _run(dock, qtbot, layer)
    assert not errors and max(Reads.planes_read) == 1  # never more than one plane at a time
    expected = nunet_enhance(volume, axes="ZYX")
    np.testing.assert_allclose(viewer.layers["lazy (NU-Net)"].data, expected, atol=1e-6)
    # a multiscale layer (as napari-ome-zarr opens an OME-Zarr image): its full-resolution level
    pyramid = viewer.add_image([lazy, lazy[:, ::2, ::2]], multiscale=True, name="pyramid", scale=(1.0, 0.3, 0.3))
    _run(dock, qtbot, pyramid)
    np.testing.assert_allclose(viewer.layers["pyramid (NU-Net)"].data, expected, atol=1e-6)
    assert tuple(viewer.layers["pyramid (NU-Net)"].scale) == (1.0, 0.3, 0.3) and not errors


@pytest.mark.parametrize("bad", ["rgba", "nan", "model"])
def test_bad_layers_and_options_are_one_notification_and_no_layer(widget, qtbot, bad):
    viewer, dock, errors = widget
    data = blobs((32, 36))
    if bad == "rgba":
        layer = viewer.add_image(np.stack([data] * 4, axis=-1).astype(np.uint8), rgb=True, name="bad")
    elif bad == "nan":
        data[5, 5] = np.nan
        layer = viewer.add_image(data, name="bad")
    else:
        layer = viewer.add_image(data, name="bad")
        dock.model_file.value = "/nowhere/missing.pt"
    _run(dock, qtbot, layer)
    assert len(errors) == 1 and errors[0].startswith("NU-Net filter: ")
    assert {"rgba": "RGBA", "nan": "NaN", "model": "missing.pt"}[bad] in errors[0]
    assert [lay.name for lay in viewer.layers] == ["bad"]
    assert dock.run.enabled  # usable again


def test_the_worker_can_be_cancelled(widget, qtbot):
    viewer, dock, errors = widget
    layer = viewer.add_image(blobs((40, 64, 64)), name="long")
    dock.image.value = layer
    dock.start()
    qtbot.waitUntil(lambda: dock.progress.value >= 1, timeout=60_000)
    dock.cancel.changed.emit(True)
    qtbot.waitUntil(lambda: dock.state["worker"] is None, timeout=60_000)
    assert [lay.name for lay in viewer.layers] == ["long"] and dock.progress.value < 40 and not errors


def test_sample_data_opens_and_a_screenshot_of_the_widget(widget, qtbot, tmp_path):
    viewer, dock, errors = widget
    viewer.open_sample("nunet-filter", "synthetic-nuclei-2d")
    layer = viewer.layers["synthetic_nuclei_2d_uint16"]
    assert layer.data.shape == (192, 160)
    dock.model.value = "nunet-v10"
    _run(dock, qtbot, layer)
    assert "synthetic_nuclei_2d_uint16 (NU-Net)" in viewer.layers and not errors
    shot = tmp_path / "napari_widget.png"
    viewer.layers["synthetic_nuclei_2d_uint16"].visible = False
    viewer.window._qt_window.resize(1100, 640)
    viewer.reset_view()
    qtbot.wait(300)
    viewer.window._qt_window.grab().save(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("NUNET_DOCS_SCREENSHOT"):  # remake the README's figure
        shutil.copy(shot, Path(__file__).resolve().parents[1] / "docs" / "figures" / "napari_widget.png")


def nunet_enhance(data, **options):
    from nunet import enhance

    return enhance(data, TEST_MODEL, device="cpu", **options)
