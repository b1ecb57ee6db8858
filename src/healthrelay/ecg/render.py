"""The 12-lead tracing as a cardiologist reads it: SVG on millimetre paper, sharp at any zoom.

User units are millimetres (the viewBox is the paper's size), so 25 mm/s and 10 mm/mV hold exactly and the
browser scales the vectors; ecg.js converts a distance on the paper back into milliseconds and millivolts
with the `data-speed` and `data-gain` the SVG carries. Layout: the standard 3 × 4 (I, II, III | aVR, aVL,
aVF | V1–V3 | V4–V6, 2.5 s each) and a full-length lead II rhythm strip, each row led by a 1 mV calibration
pulse.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from healthrelay.ecg.formats import Tracing

LAYOUT: tuple[tuple[str, str, str, str], ...] = (
    ("I", "aVR", "V1", "V4"),
    ("II", "aVL", "V2", "V5"),
    ("III", "aVF", "V3", "V6"),
)
RHYTHM_LEAD = "II"
COLUMN_SECONDS = 2.5
RHYTHM_SECONDS = 10.0
ROW_MM = 40.0  # baseline to baseline: room for 2 mV each way at 10 mm/mV
LEFT_MM = 12.0  # the calibration pulse's margin
TOP_MM = 6.0
BOTTOM_MM = 8.0
MAX_POINTS_PER_SECOND = 1000  # more is finer than the paper shows (0.025 mm at 25 mm/s)
MINOR_MM = 1.0
MAJOR_MM = 5.0


def _fmt(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"


def _grid(width: float, height: float) -> str:
    """1 mm minor and 5 mm major lines, one path each (a pattern would blur at some zoom levels)."""
    minor: list[str] = []
    major: list[str] = []
    for i in range(int(round(width / MINOR_MM)) + 1):
        x = i * MINOR_MM
        (major if i % 5 == 0 else minor).append(f"M{_fmt(x)} 0V{_fmt(height)}")
    for j in range(int(round(height / MINOR_MM)) + 1):
        y = j * MINOR_MM
        (major if j % 5 == 0 else minor).append(f"M0 {_fmt(y)}H{_fmt(width)}")
    return (f'<path class="ecg-grid-minor" d="{"".join(minor)}" stroke="#f6c3c3" stroke-width="0.05" fill="none"/>'
            f'<path class="ecg-grid-major" d="{"".join(major)}" stroke="#e88f8f" stroke-width="0.15" fill="none"/>')


def _calibration(x: float, baseline: float, gain: float, speed: float) -> str:
    """1 mV high for 200 ms: a 10 mm × 5 mm step at the standard settings."""
    rise = gain * 1.0
    run = speed * 0.2
    return (f'<path class="ecg-cal" d="M{_fmt(x)} {_fmt(baseline)}h2v{_fmt(-rise)}h{_fmt(run)}v{_fmt(rise)}h2" '
            'stroke="#000" stroke-width="0.25" fill="none"/>')


def _trace(values: np.ndarray, *, x0: float, baseline: float, rate: float, speed: float, gain: float) -> str:
    step = max(1, int(np.ceil(rate / MAX_POINTS_PER_SECOND)))
    picked = values[::step]
    dx = speed * step / rate
    xs = x0 + np.arange(len(picked)) * dx
    ys = baseline - picked * gain
    points = " ".join(f"{_fmt(x)},{_fmt(y)}" for x, y in zip(xs, ys, strict=True))
    return (f'<polyline points="{points}" fill="none" stroke="#000" stroke-width="0.3" '
            'stroke-linejoin="round" stroke-linecap="round"/>')


def _segment(tr: Tracing, lead: str, start_s: float, seconds: float) -> np.ndarray | None:
    values = tr.leads.get(lead)
    if values is None:
        return None
    a = int(round(start_s * tr.sample_rate))
    b = int(round((start_s + seconds) * tr.sample_rate))
    return np.asarray(values[a:b], dtype=float)


def _label(x: float, y: float, text: str, *, missing: bool = False) -> str:
    colour = "#a33" if missing else "#000"
    return (f'<text x="{_fmt(x)}" y="{_fmt(y)}" font-size="3.5" font-family="sans-serif" fill="{colour}" '
            f'class="ecg-lead-label">{escape(text)}</text>')


def render_svg(tr: Tracing, *, speed_mm_s: float = 25, gain_mm_mv: float = 10) -> str:
    """The whole sheet as one SVG document (a string, ready to inline in a page or serve as image/svg+xml)."""
    if speed_mm_s <= 0 or gain_mm_mv <= 0:
        raise ValueError("speed and gain must be positive")
    column_mm = COLUMN_SECONDS * speed_mm_s
    width = LEFT_MM + 4 * column_mm + 4.0
    row_mm = ROW_MM * gain_mm_mv / 10.0
    height = TOP_MM + 4 * row_mm + BOTTOM_MM
    width, height = float(np.ceil(width / MAJOR_MM) * MAJOR_MM), float(np.ceil(height / MAJOR_MM) * MAJOR_MM)
    rate = float(tr.sample_rate)
    parts: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="ecg-sheet" width="{_fmt(width)}mm" '
        f'height="{_fmt(height)}mm" viewBox="0 0 {_fmt(width)} {_fmt(height)}" '
        f'data-speed="{_fmt(speed_mm_s)}" data-gain="{_fmt(gain_mm_mv)}" role="img" '
        f'aria-label="12-lead ECG, {_fmt(speed_mm_s)} mm/s, {_fmt(gain_mm_mv)} mm/mV" '
        'preserveAspectRatio="xMinYMin meet">',
        f'<title>12 导联心电图 / 12-lead ECG · {_fmt(speed_mm_s)} mm/s · {_fmt(gain_mm_mv)} mm/mV</title>',
        f'<rect width="{_fmt(width)}" height="{_fmt(height)}" fill="#fff"/>',
        _grid(width, height),
    ]
    for r, row in enumerate(LAYOUT):
        baseline = TOP_MM + row_mm * (r + 0.5)
        parts.append(_calibration(1.0, baseline, gain_mm_mv, speed_mm_s))
        for c, lead in enumerate(row):
            x0 = LEFT_MM + c * column_mm
            seg = _segment(tr, lead, c * COLUMN_SECONDS, COLUMN_SECONDS)
            parts.append(f'<g class="ecg-trace" data-lead="{lead}" data-t0="{_fmt(c * COLUMN_SECONDS)}" '
                         f'data-x0="{_fmt(x0)}" data-baseline="{_fmt(baseline)}">')
            if c > 0:
                parts.append(f'<path d="M{_fmt(x0)} {_fmt(baseline - 3)}v6" stroke="#000" stroke-width="0.3"/>')
            if seg is None:
                parts.append(_label(x0 + 1, baseline - row_mm * 0.3, f"{lead}（缺 / missing）", missing=True))
            elif len(seg) == 0:  # the recording ends before this column
                parts.append(_label(x0 + 1, baseline - row_mm * 0.3, lead))
            else:
                parts.append(_label(x0 + 1, baseline - row_mm * 0.3, lead))
                parts.append(_trace(seg, x0=x0, baseline=baseline, rate=rate, speed=speed_mm_s, gain=gain_mm_mv))
            parts.append("</g>")
    baseline = TOP_MM + row_mm * 3.5
    parts.append(_calibration(1.0, baseline, gain_mm_mv, speed_mm_s))
    rhythm = _segment(tr, RHYTHM_LEAD, 0.0, RHYTHM_SECONDS)
    parts.append(f'<g class="ecg-trace ecg-rhythm" data-lead="{RHYTHM_LEAD}" data-t0="0" data-x0="{_fmt(LEFT_MM)}" '
                 f'data-baseline="{_fmt(baseline)}">')
    if rhythm is None or len(rhythm) == 0:
        parts.append(_label(LEFT_MM + 1, baseline - row_mm * 0.3, f"{RHYTHM_LEAD}（缺 / missing）", missing=True))
    else:
        parts.append(_label(LEFT_MM + 1, baseline - row_mm * 0.3, f"{RHYTHM_LEAD}"))
        parts.append(_trace(rhythm, x0=LEFT_MM, baseline=baseline, rate=rate, speed=speed_mm_s, gain=gain_mm_mv))
    parts.append("</g>")
    parts.append(f'<text x="{_fmt(LEFT_MM)}" y="{_fmt(height - 2.5)}" font-size="3" font-family="sans-serif" '
                 f'fill="#333">{_fmt(speed_mm_s)} mm/s · {_fmt(gain_mm_mv)} mm/mV · {_fmt(rate)} Hz</text>')
    parts.append("</svg>")
    return "".join(parts)
