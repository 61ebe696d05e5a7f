"""Reading and writing real image files: axes, calibration, dtypes, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from nunet._atomic import atomic_path
from nunet.errors import ImageReadError, ImageWriteError
from nunet.io import Calibration, Image, convert_dtype, read_image, write_image

CAL = Calibration(
    pixel_width=0.325, pixel_height=0.325, unit="micron", z_spacing=1.5, frame_interval=12.0, time_unit="sec"
)


def test_imagej_hyperstack_round_trip(tmp_path):
    data = np.random.default_rng(0).integers(0, 4000, (3, 4, 2, 20, 24), dtype=np.uint16)
    path = write_image(Image(data, "TZCYX", CAL), tmp_path / "h.tif")
    back = read_image(path)
    assert back.axes == "TZCYX"
    np.testing.assert_array_equal(back.data, data)
    assert back.calibration.pixel_width == pytest.approx(0.325, rel=1e-6)
    assert back.calibration.unit == "micron"
    assert back.calibration.z_spacing == 1.5 and back.calibration.frame_interval == 12.0
    with tifffile.TiffFile(path) as tif:
        meta = tif.imagej_metadata
        assert (meta["frames"], meta["slices"], meta["channels"]) == (3, 4, 2)
        assert meta["hyperstack"]


def test_axes_are_reordered_to_imagej_order(tmp_path):
    data = np.random.default_rng(1).random((2, 3, 16, 16), dtype=np.float32)  # C, T, Y, X
    back = read_image(write_image(Image(data, "CTYX"), tmp_path / "o.tif"))
    assert back.axes == "TCYX"
    np.testing.assert_array_equal(back.data, np.transpose(data, (1, 0, 2, 3)))


def test_ome_tiff_calibration(tmp_path):
    path = tmp_path / "a.ome.tif"
    data = np.zeros((2, 3, 16, 16), np.uint8)
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={"axes": "ZCYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 0.9},
    )
    image = read_image(path)
    assert image.axes == "ZCYX"
    assert (image.calibration.pixel_width, image.calibration.pixel_height) == pytest.approx((0.2, 0.25))
    assert image.calibration.z_spacing == pytest.approx(0.9)


def test_plain_multipage_becomes_z(tmp_path):
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tw:
        for i in range(3):
            tw.write(np.full((8, 9), i, np.uint8), contiguous=False, metadata=None)
    image = read_image(path)
    assert image.axes == "ZYX" and image.data.shape == (3, 8, 9)


def test_png_and_jpg(tmp_path):
    import imageio.v3 as iio

    rgb = np.random.default_rng(2).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "a.png", rgb)
    iio.imwrite(tmp_path / "b.jpg", rgb[..., 0])
    assert read_image(tmp_path / "a.png").axes == "YXS"
    np.testing.assert_array_equal(read_image(tmp_path / "a.png").data, rgb)
    assert read_image(tmp_path / "b.jpg").axes == "YX"


def test_output_dtypes():
    x = np.array([0.0, 0.5, 1.0], np.float32)
    assert convert_dtype(x, "uint8").tolist() == [0, 128, 255]
    assert convert_dtype(x, "uint16").tolist() == [0, 32768, 65535]
    assert convert_dtype(x, "float32").dtype == np.float32


def test_write_refuses_existing_file(tmp_path):
    path = tmp_path / "x.tif"
    path.write_bytes(b"keep me")
    with pytest.raises(ImageWriteError, match="x.tif: output exists"):
        write_image(Image(np.zeros((4, 4), np.float32), "YX"), path)
    assert path.read_bytes() == b"keep me"


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.tif"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"half a file")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ImageWriteError, match="cannot write"):
        write_image(Image(np.zeros((4, 4), np.float32), "YX"), blocker / "sub" / "o.tif")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_tiff(tmp_path, fraction):
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, np.arange(5 * 64 * 64, dtype=np.uint16).reshape(5, 64, 64), imagej=True)
    raw = full.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(raw[: int(len(raw) * fraction)])
    with pytest.raises(ImageReadError, match=r"cut\.tif: (not a readable|corrupt or truncated) TIFF"):
        read_image(cut)


def test_non_image_with_tif_suffix(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("this is not an image")
    with pytest.raises(ImageReadError, match="notes.tif: not a readable TIFF"):
        read_image(path)


def test_complex_tiff_is_refused(tmp_path):
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, np.ones((8, 8), np.complex64))
    with pytest.raises(ImageReadError, match=r"c\.tif: complex data"):
        read_image(path)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "a.bmp"
    path.write_bytes(b"BM")
    with pytest.raises(ImageReadError, match="unsupported file type"):
        read_image(path)


@pytest.mark.parametrize("samples", [3, 4])
def test_planar_tiffs_are_read_with_a_warning_and_axes_decide(tmp_path, samples):
    """tifffile writes a (3|4, H, W) array as planar RGB ('SYX'): read as RGB with a warning naming
    the override; with axes= (the CLI's --axes) the stored planes are what the caller says."""
    from nunet.errors import OptionWarning

    data = np.random.default_rng(samples).random((samples, 24, 28)).astype(np.float32)
    tifffile.imwrite(tmp_path / "planar.tif", data)
    with pytest.warns(OptionWarning, match="read as planar RGB.*--axes CYX"):
        rgb = read_image(tmp_path / "planar.tif")
    assert rgb.axes == "YXS" and rgb.data.shape == (24, 28, samples)
    np.testing.assert_array_equal(rgb.data, np.moveaxis(data, 0, -1))
    channels = read_image(tmp_path / "planar.tif", axes="CYX")
    assert channels.axes == "CYX" and channels.data.shape == data.shape
    np.testing.assert_array_equal(channels.data, data)


def test_cli_axes_decide_for_a_planar_tiff(tmp_path, model):
    from typer.testing import CliRunner

    from nunet import enhance
    from nunet.cli import app

    data = np.random.default_rng(0).random((3, 24, 28)).astype(np.float32)
    tifffile.imwrite(tmp_path / "planar.tif", data)
    out = tmp_path / "o.tif"
    result = CliRunner().invoke(
        app, ["filter", str(tmp_path / "planar.tif"), str(out), "-m", "nunet-test", "--axes", "CYX"]
    )
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_image(out).data, enhance(data, model, axes="CYX"))


def test_enhance_warns_when_it_guesses_rgb():
    from nunet import enhance
    from nunet.errors import OptionWarning

    with pytest.warns(OptionWarning, match="read as one RGB.*axes='YXC'"):
        out = enhance(np.random.default_rng(1).random((24, 28, 3)), "nunet-test")
    assert out.shape == (24, 28)
