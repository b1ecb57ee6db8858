"""Rendering what a radiologist looks at: windows in Hounsfield units, inverted MONOCHROME1, colour, every
transfer syntax the archive takes, multi-frame objects, and a decode cache that keeps scrolling quick."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from healthrelay.core.errors import InvalidInput, NotFound
from healthrelay.imaging import render
from tests.imaging.conftest import sample_path, to_bytes


def _bytes(name: str) -> bytes:
    return sample_path(name).read_bytes()


def _pixels(image: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image)))


def _hu(ds: Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_window_is_applied_in_hounsfield_units() -> None:
    data = _bytes("CT_small.dcm")
    ds = pydicom.dcmread(io.BytesIO(data))
    hu = _hu(ds)
    out = _pixels(render.render_frame(data, window=(40, 400)))
    assert out.shape == hu.shape and out.dtype == np.uint8
    # PS3.3 linear window: below C-0.5-(W-1)/2 black, above C-0.5+(W-1)/2 white, linear between.
    assert (out[hu <= 40 - 0.5 - 399 / 2] == 0).all()
    assert (out[hu > 40 - 0.5 + 399 / 2] == 255).all()
    inside = (hu > -160) & (hu < 239)
    expected = np.clip(((hu - 39.5) / 399 + 0.5) * 255, 0, 255)
    assert np.abs(out[inside].astype(float) - expected[inside]).max() <= 1.0


def test_without_a_window_the_instances_own_voi_is_used() -> None:
    data = _bytes("MR_small.dcm")  # Window Center 600, Width 1600
    assert np.array_equal(_pixels(render.render_frame(data)), _pixels(render.render_frame(data, window=(600, 1600))))


def test_without_any_window_the_value_range_is_spread() -> None:
    out = _pixels(render.render_frame(_bytes("CT_small.dcm")))  # CT_small has no VOI
    assert out.min() == 0 and out.max() == 255


def test_monochrome1_is_shown_inverted() -> None:
    ds = pydicom.dcmread(sample_path("MR_small.dcm"))
    normal = _pixels(render.render_frame(to_bytes(ds)))
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = _pixels(render.render_frame(to_bytes(ds)))
    assert np.array_equal(inverted, 255 - normal)


@pytest.mark.parametrize("compressed", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                        "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
                                        "MR_small_implicit.dcm"])
def test_lossless_encodings_render_exactly_like_the_uncompressed_image(compressed: str) -> None:
    assert np.array_equal(_pixels(render.render_frame(_bytes(compressed))),
                          _pixels(render.render_frame(_bytes("MR_small.dcm"))))


def test_rgb_multi_frame_each_frame_in_colour() -> None:
    data = _bytes("SC_rgb_rle_2frame.dcm")
    ds = pydicom.dcmread(io.BytesIO(data))
    first, second = (_pixels(render.render_frame(data, frame=n)) for n in (1, 2))
    assert first.shape == (100, 100, 3)
    assert np.array_equal(first, ds.pixel_array[0]) and np.array_equal(second, ds.pixel_array[1])
    with pytest.raises(NotFound):
        render.render_frame(data, frame=3)


@pytest.mark.parametrize("sample", ["SC_jpeg_no_color_transform.dcm", "examples_ybr_color.dcm",
                                    "SC_rgb_jpeg_gdcm.dcm", "examples_palette.dcm"])
def test_ybr_jpeg_and_palette_colour_come_out_rgb(sample: str) -> None:
    out = _pixels(render.render_frame(_bytes(sample)))
    assert out.ndim == 3 and out.shape[2] == 3 and out.std() > 0


def test_enhanced_multi_frame_uses_each_frames_window() -> None:
    """Per-frame functional groups (enhanced CT/MR) carry a window per frame."""
    base = pydicom.dcmread(sample_path("CT_small.dcm"))
    frame = base.pixel_array
    ds = base
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack([frame, frame]).tobytes()
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        delattr(ds, keyword)
    shared = Dataset()
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = 1, -1024
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for center, width in ((40, 400), (300, 1500)):
        item, voi = Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        item.FrameVOILUTSequence = Sequence([voi])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    data = to_bytes(ds)
    single = _bytes("CT_small.dcm")
    assert np.array_equal(_pixels(render.render_frame(data, frame=1)),
                          _pixels(render.render_frame(single, window=(40, 400))))
    assert np.array_equal(_pixels(render.render_frame(data, frame=2)),
                          _pixels(render.render_frame(single, window=(300, 1500))))


def test_jpeg_output_and_window_functions() -> None:
    data = _bytes("CT_small.dcm")
    jpeg = render.render_frame(data, fmt="jpeg")
    assert jpeg[:2] == b"\xff\xd8" and Image.open(io.BytesIO(jpeg)).size == (128, 128)
    instance = render.decoded("test-window-functions", lambda: data)
    sigmoid = render.render_decoded(instance, window=render.Window(40, 400, "sigmoid"))
    linear = render.render_decoded(instance, window=render.Window(40, 400, "linear"))
    assert sigmoid != linear
    with pytest.raises(InvalidInput):
        render.render_frame(data, fmt="gif")


@pytest.mark.parametrize("text,ok", [("40,400", True), ("40,400,linear-exact", True), ("-600,1500,SIGMOID", True),
                                     ("40", False), ("40,0", False), ("a,b", False), ("40,400,cubic", False),
                                     ("nan,400", False)])
def test_window_parameter(text: str, ok: bool) -> None:
    if ok:
        window = render.parse_window(text)
        assert window.width > 0 and window.function in render.VOI_FUNCTIONS
    else:
        with pytest.raises(InvalidInput):
            render.parse_window(text)


@pytest.mark.parametrize("sample,code", [("test-SR.dcm", "no_pixel_data"), ("JPEG-lossy.dcm", "cannot_render")])
def test_what_cannot_be_rendered_is_refused_by_name(sample: str, code: str) -> None:
    # JPEG-lossy.dcm is 12-bit JPEG (extended), which the installed decoders cannot read.
    with pytest.raises(InvalidInput) as caught:
        render.render_frame(_bytes(sample))
    assert caught.value.code == code


def test_decoded_instances_are_cached_within_a_byte_budget() -> None:
    cache = render._Cache(budget=3 * 1024 * 1024)
    loads: list[str] = []

    def loader(name: str):  # noqa: ANN202
        def load() -> bytes:
            loads.append(name)
            return _bytes(name)
        return load

    first = cache.get("ct", loader("CT_small.dcm"))
    assert cache.get("ct", loader("CT_small.dcm")) is first and loads == ["CT_small.dcm"]
    # Multi-frame pixel data is decoded frame by frame as frames are asked for.
    multi = cache.get("rgb", loader("SC_rgb_rle_2frame.dcm"))
    assert len(multi._frames) == 0
    multi.frame(1)
    assert len(multi._frames) == 1
    # A large image pushes the least recently used ones out.
    big = cache.get("palette", loader("examples_palette.dcm"))
    for n in range(6):
        cache.get(f"ct{n}", loader("JPEG2000.dcm"))
    assert sum(i.nbytes for i in cache._items.values()) <= cache.budget
    assert "ct" not in cache._items and big.nbytes > 0
