"""Turning a stored instance into an 8-bit PNG or JPEG for the viewer (WADO-RS "rendered").

A radiologist scrolls a series and drags the window back and forth: each move asks for another image.
Decoding (JPEG 2000, RLE ...) is the slow part, so the decoded pixel arrays of recently viewed instances
stay in a small LRU with a byte budget; windowing and PNG encoding of a cached 512x512 frame take a few
milliseconds.
"""

from __future__ import annotations

import hashlib
import io
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, pixel_array

from healthrelay.core.errors import InvalidInput, NotFound

# Decoded pixel data kept in memory across requests (bytes). A 512x512 CT slice is 0.5 MB, so a
# 300-slice series fits; a larger working set evicts the least recently viewed instances.
CACHE_BUDGET_BYTES = 256 * 1024 * 1024
VOI_FUNCTIONS = ("linear", "linear_exact", "sigmoid")
FORMATS = ("png", "jpeg")
_PNG_COMPRESS_LEVEL = 1  # fast: rendering latency matters more than a few kilobytes on loopback/LAN


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "linear"


@dataclass
class DecodedInstance:
    """One instance's dataset plus its decoded frames (decoded lazily for multi-frame instances).

    The encoded pixel data is dropped from the dataset once every frame is decoded, so a cached
    single-frame instance costs its decoded array and a small header.
    """

    header: Dataset
    number_of_frames: int
    photometric: str
    _frames: dict[int, np.ndarray] = field(default_factory=dict)
    _encoded_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def nbytes(self) -> int:
        return self._encoded_bytes + sum(a.nbytes for a in self._frames.values()) + 16384

    def frame(self, index: int) -> np.ndarray:
        """The raw (stored-value) array of frame `index` (0-based)."""
        if not 0 <= index < self.number_of_frames:
            raise NotFound(f"没有第 {index + 1} 帧（共 {self.number_of_frames} 帧）/ no frame {index + 1} "
                           f"(the instance has {self.number_of_frames})", code="frame_not_found")
        with self._lock:
            arr = self._frames.get(index)
            if arr is not None:
                return arr
            arr = _decode(self.header, index)
            self._frames[index] = arr
            if len(self._frames) == self.number_of_frames:
                # Every frame decoded: the encoded copy is no longer needed.
                for tag in _PIXEL_TAGS:
                    if tag in self.header:
                        del self.header[tag]
                self._encoded_bytes = 0
        return arr


_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


def _decode(ds: Dataset, index: int) -> np.ndarray:
    try:
        arr = pixel_array(ds, index=index)
    except Exception as exc:  # decoders raise many types (RuntimeError, ValueError, NotImplementedError ...)
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise InvalidInput(f"无法解码该图像（传输语法 {ts}）/ cannot decode the pixel data (transfer syntax {ts}): "
                           f"{str(exc).splitlines()[0][:200]}", code="cannot_render") from exc
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def load(data: bytes) -> DecodedInstance:
    """Parse a Part 10 file; single-frame pixel data is decoded at once, multi-frame on demand."""
    try:
        ds = dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise InvalidInput(f"不是可读的 DICOM 文件 / not a readable DICOM file: {str(exc)[:200]}",
                           code="not_dicom") from exc
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise InvalidInput("该实例没有像素数据（例如结构化报告）/ the instance has no pixel data (a report, say)",
                           code="no_pixel_data")
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    decoded = DecodedInstance(header=ds, number_of_frames=max(frames, 1),
                              photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper(),
                              _encoded_bytes=len(data))
    if decoded.number_of_frames == 1:
        decoded.frame(0)
    return decoded


class _Cache:
    """Least recently used decoded instances within a byte budget; safe across request threads."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._items: OrderedDict[str, DecodedInstance] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, loader: Callable[[], bytes]) -> DecodedInstance:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                return item
        item = load(loader())  # outside the lock: decoding one instance must not stall the others
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            self._evict()
        return item

    def _evict(self) -> None:
        total = sum(i.nbytes for i in self._items.values())
        while total > self.budget and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            total -= old.nbytes
        if total > self.budget and self._items:  # a single instance larger than the whole budget
            self._items.clear()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


cache = _Cache(CACHE_BUDGET_BYTES)


def decoded(key: str, loader: Callable[[], bytes]) -> DecodedInstance:
    """The decoded instance for `key` (use its SHA-256: content-addressed), loading it only on a miss."""
    return cache.get(key, loader)


# --- per-frame attributes: enhanced multi-frame objects keep them in functional groups ---------------

def _functional(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        seq = ds.get(groups)
        if not seq:
            continue
        item = seq[index] if groups.startswith("PerFrame") and index < len(seq) else seq[0]
        inner = item.get(sequence)
        if inner:
            return inner[0]
    return None


def _first_number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (MultiValue, list, tuple)):
            value = value[0]
        number = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if math.isfinite(number) else None


def rescale_of(ds: Dataset, index: int = 0) -> tuple[float, float]:
    """Modality LUT as slope and intercept (Hounsfield units for CT)."""
    source = _functional(ds, index, "PixelValueTransformationSequence") or ds
    slope = _first_number(source.get("RescaleSlope"))
    intercept = _first_number(source.get("RescaleIntercept"))
    return (slope if slope not in (None, 0.0) else 1.0), (intercept or 0.0)


def window_of(ds: Dataset, index: int = 0) -> Window | None:
    """The instance's first VOI window (per frame for enhanced objects), or None."""
    source = _functional(ds, index, "FrameVOILUTSequence") or ds
    center = _first_number(source.get("WindowCenter"))
    width = _first_number(source.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR").lower().replace("-", "_")
    return Window(center, width, function if function in VOI_FUNCTIONS else "linear")


def parse_window(text: str) -> Window:
    """The DICOMweb `window` query parameter: "center,width[,linear|linear-exact|sigmoid]"."""
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        center, width = float(parts[0]), float(parts[1])
        if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
            raise ValueError
    except ValueError:
        raise InvalidInput("窗宽窗位格式应为 中心,宽度[,函数]，宽度大于 0 / window must be center,width[,function] "
                           "with width > 0", code="bad_window") from None
    function = parts[2].lower().replace("-", "_") if len(parts) == 3 and parts[2] else "linear"
    if function not in VOI_FUNCTIONS:
        raise InvalidInput(f"不支持的窗函数 {parts[2]!r} / unknown window function {parts[2]!r} "
                           "(linear, linear-exact, sigmoid)", code="bad_window")
    return Window(center, width, function)


# --- rendering -----------------------------------------------------------------------------------

def _to_8bit_mono(values: np.ndarray, window: Window) -> np.ndarray:
    """Apply the VOI window (PS3.3 C.11.2.1.2) to modality values, producing 0..255."""
    c, w = window.center, window.width
    if window.function == "sigmoid":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    elif window.function == "linear_exact":
        out = (values - (c - w / 2.0)) * (255.0 / w)
    elif w <= 1.0:
        out = np.where(values > c - 0.5, 255.0, 0.0)
    else:
        out = (values - (c - 0.5 - (w - 1.0) / 2.0)) * (255.0 / (w - 1.0))
    out = np.asarray(out, dtype=np.float32)
    out += 0.5
    np.clip(out, 0.0, 255.0, out=out)
    return out.astype(np.uint8)


def _auto_window(raw: np.ndarray, ds: Dataset, slope: float, intercept: float) -> Window:
    """No window in the request or the instance: span the frame's values (padding excluded)."""
    sample = raw
    padding = ds.get("PixelPaddingValue")
    if padding is not None:
        try:
            mask = raw != padding
            if mask.any():
                sample = raw[mask]
        except (TypeError, ValueError):
            pass
    lo, hi = float(sample.min()), float(sample.max())
    lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return Window((lo + hi) / 2.0, max(hi - lo, 1.0), "linear_exact")


def _colour_to_8bit(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    top = float((1 << bits) - 1) if bits else float(arr.max() or 1)
    return np.clip(arr.astype(np.float32) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)


def to_8bit(instance: DecodedInstance, *, frame: int = 1, window: Window | None = None) -> np.ndarray:
    """Frame `frame` (1-based) as an 8-bit grey (HxW) or RGB (HxWx3) array ready to encode."""
    index = frame - 1
    raw = instance.frame(index)
    ds = instance.header
    photometric = instance.photometric
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(raw, ds)
        return _colour_to_8bit(rgb, 16 if rgb.dtype != np.uint8 else 8)
    if raw.ndim == 3:  # RGB (YBR is converted to RGB by the decoder)
        return _colour_to_8bit(raw, int(ds.get("BitsStored") or 8))
    slope, intercept = rescale_of(ds, index)
    chosen = window or window_of(ds, index) or _auto_window(raw, ds, slope, intercept)
    values = raw.astype(np.float32, copy=False) if raw.dtype != np.float32 else raw
    if slope != 1.0 or intercept != 0.0:
        values = values * np.float32(slope) + np.float32(intercept)
    grey = _to_8bit_mono(values, chosen)
    inverse = str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    if (photometric == "MONOCHROME1") != inverse:
        np.subtract(255, grey, out=grey)
    return grey


def encode(pixels: np.ndarray, fmt: str = "png", *, quality: int = 90) -> bytes:
    if fmt not in FORMATS:
        raise InvalidInput(f"不支持的图像格式 {fmt!r} / unsupported image format {fmt!r} (png, jpeg)",
                           code="bad_format")
    image = Image.fromarray(pixels)
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    else:
        image.save(out, format="JPEG", quality=max(1, min(int(quality), 100)))
    return out.getvalue()


def render_decoded(instance: DecodedInstance, *, frame: int = 1, window: Window | None = None,
                   fmt: str = "png", quality: int = 90) -> bytes:
    return encode(to_8bit(instance, frame=frame, window=window), fmt, quality=quality)


def render_frame(data: bytes, *, frame: int = 1, window: tuple[float, float] | Window | None = None,
                 fmt: str = "png", quality: int = 90) -> bytes:
    """Render one frame (1-based) of a Part 10 file as PNG or JPEG.

    `window` is (center, width) in modality units (a linear VOI); without it the instance's own first
    window is used, else the frame's value range.
    """
    if window is not None and not isinstance(window, Window):
        center, width = window
        if width <= 0:
            raise InvalidInput("窗宽必须大于 0 / window width must be > 0", code="bad_window")
        window = Window(float(center), float(width))
    instance = decoded(hashlib.sha256(data).hexdigest(), lambda: data)
    return render_decoded(instance, frame=frame, window=window, fmt=fmt, quality=quality)
