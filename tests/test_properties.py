"""Property-based: read_image -> filter_image -> write_image over shapes, dtypes, axes and channels.

Whatever the input, the only errors are nunet's own one-line errors, and a result keeps the
input's shape (minus S, and minus C for a single channel) and its calibration.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nunet.api import filter_image
from nunet.errors import NUNetError
from nunet.io import Calibration, Image, read_image, write_image

DTYPES = ("uint8", "uint16", "int16", "float32", "float64")


@st.composite
def images(draw):
    """(data, axes, channel) with ImageJ-ordered axes from TZC + YX, or an RGB plane (YXS)."""
    if draw(st.booleans()) and draw(st.booleans()):
        shape = (draw(st.integers(1, 24)), draw(st.integers(1, 24)), 3)
        data = draw(st.integers(0, 2**31 - 1).map(lambda s: np.random.default_rng(s).integers(0, 256, shape)))
        return data.astype(np.uint8), "YXS", None
    lead = "".join(a for a in "TZC" if draw(st.booleans()))
    sizes = [draw(st.integers(1, 3)) for _ in lead] + [draw(st.integers(1, 24)), draw(st.integers(1, 24))]
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    values = np.random.default_rng(seed).random(sizes) * (200 if dtype != "float64" else 1e-3)
    if draw(st.booleans()):
        values[..., : sizes[-2] // 2, :] = 0  # flat regions, constant planes
    channel = draw(st.one_of(st.none(), st.integers(-4, 4), st.lists(st.integers(-4, 4), min_size=1, max_size=3)))
    return values.astype(dtype), lead + "YX", channel


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=images(), pixel=st.floats(0.05, 5.0))
def test_read_filter_write_keeps_shape_and_calibration_or_says_why(tmp_path, case, pixel):
    data, axes, channel = case
    path = tmp_path / "in.tif"
    imagej = data.dtype in (np.uint8, np.uint16, np.float32)
    if imagej:  # an ImageJ hyperstack, as Fiji writes it
        write_image(Image(data, axes, Calibration(pixel, pixel, "um")), path, overwrite=True)
    else:  # a plain shaped TIFF, as other software writes it
        tifffile.imwrite(
            path, data, photometric="minisblack", metadata={"axes": axes}, resolution=(1 / pixel, 1 / pixel)
        )
    image = read_image(path)
    assert image.data.size == data.size  # ImageJ files may drop singleton axes: the read image is the reference
    data, axes = image.data, image.axes
    try:
        result = filter_image(image, "nunet-test", channel=channel, device="cpu")
    except NUNetError as exc:
        assert "\n" not in str(exc)
        assert channel is not None  # only a channel choice can be refused for these images
        n = data.shape[axes.index("C")] if "C" in axes else 0
        picks = [channel] if isinstance(channel, int) else channel
        assert "C" not in axes or any(not -n <= p < n for p in picks)
        return
    expected = list(data.shape)
    out_axes = axes
    if "S" in axes:
        expected.pop()
        out_axes = axes.replace("S", "")
    if channel is not None:
        c = axes.index("C")
        expected[c] = len(channel) if isinstance(channel, list) else 1
        if isinstance(channel, int):
            expected.pop(c)
            out_axes = out_axes.replace("C", "")
    assert result.data.shape == tuple(expected) and result.axes == out_axes
    assert result.data.dtype == np.float32 and 0.0 <= result.data.min() and result.data.max() <= 1.0
    written = read_image(write_image(result, tmp_path / "out.tif", overwrite=True))
    # the ImageJ TIFF format stores no singleton T, Z or C axis: those come back without it
    kept = "".join(a for a, n in zip(result.axes, result.data.shape) if n > 1 or a in "YX")
    assert written.axes == kept and written.data.shape == tuple(
        n for a, n in zip(result.axes, result.data.shape) if a in kept
    )
    np.testing.assert_array_equal(written.data.reshape(result.data.shape), result.data)
    if imagej:
        assert written.calibration.pixel_width == pytest.approx(image.calibration.pixel_width, rel=1e-5)
        assert written.calibration.unit == image.calibration.unit


def test_an_axes_string_that_does_not_fit_is_a_nunet_error():
    from nunet import enhance

    for axes in ("ZYX", "YXQ", "YYX", "TX"):
        with pytest.raises(NUNetError):
            enhance(np.zeros((4, 5)), "nunet-test", axes=axes)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(4, 20), st.integers(4, 20)),
    scale=st.sampled_from([1e-300, 1e-30, 1.0, 1e30, 1e300]),
    offset=st.sampled_from([0.0, -1.0, 1e6]),
)
def test_float64_data_of_any_magnitude_filters_like_its_scaled_copy(seed, shape, scale, offset):
    """Finite float64 data, tiny or beyond float32's range: a finite output in [0, 1], the same as
    for the data scaled to ordinary values (the filter is invariant to gain and offset)."""
    from nunet import enhance

    base = np.random.default_rng(seed).random(shape)
    data = base * scale + offset * scale
    if not np.isfinite(data).all() or np.ptp(data) == 0:  # offset x scale overflowed, or the gain vanished
        return
    out = enhance(data, "nunet-test", radius="off", device="cpu")
    assert np.isfinite(out).all() and 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_allclose(out, enhance(base, "nunet-test", radius="off", device="cpu"), atol=2e-3)


@st.composite
def tiffs(draw):
    """A TIFF as other software writes it: planar or interleaved RGB, an ImageJ hyperstack, plain pages."""
    kind = draw(st.sampled_from(["planar", "rgb", "imagej", "pages"]))
    h, w = draw(st.integers(5, 24)), draw(st.integers(5, 24))
    samples = draw(st.sampled_from([3, 4]))
    shape = {
        "planar": (samples, h, w),
        "rgb": (h, w, samples),
        "imagej": (draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w),
        "pages": (draw(st.integers(2, 5)), h, w),
    }[kind]
    dtype = draw(st.sampled_from(["uint8", "uint16", "float32"]))
    data = (np.random.default_rng(draw(st.integers(0, 2**31 - 1))).random(shape) * 200).astype(dtype)
    return kind, data


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=tiffs())
def test_read_image_reads_generated_tiffs_or_says_why(tmp_path, case):
    """Every generated TIFF reads with all its pixels and valid axes (S last; a planar file with a
    warning), and filters; --axes decides for a planar one."""
    import warnings

    from nunet.errors import OptionWarning

    kind, data = case
    path = tmp_path / "t.tif"
    options = {
        "planar": {"photometric": "rgb", "planarconfig": "separate"},  # what tifffile writes for (3|4, H, W)
        "rgb": {"photometric": "rgb"},
        "imagej": {"imagej": True, "metadata": {"axes": "ZCYX"}},
        "pages": {"photometric": "minisblack"},
    }[kind]
    tifffile.imwrite(path, data, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_image(path)
    assert image.data.size == data.size and ("S" not in image.axes or image.axes.endswith("S"))
    assert (kind == "planar") == any(issubclass(w.category, OptionWarning) for w in caught)
    result = filter_image(image, "nunet-test", device="cpu", radius="off")
    yx = tuple(image.data.shape[image.axes.index(a)] for a in "YX")
    assert np.isfinite(result.data).all() and result.data.shape[-2:] == yx
    if kind == "planar":
        assert read_image(path, axes="CYX").data.shape == data.shape
