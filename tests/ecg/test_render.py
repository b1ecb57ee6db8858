"""The 12-lead sheet: standard layout, millimetre grid, calibration and true scale at 25 mm/s and 10 mm/mV."""

from __future__ import annotations

import re

import numpy as np
from lxml import etree

from healthrelay.ecg.formats import Tracing
from healthrelay.ecg.render import render_svg

NS = {"s": "http://www.w3.org/2000/svg"}
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def _tracing(rate: float = 500, seconds: float = 10, *, leads: tuple[str, ...] = LEADS) -> Tracing:
    n = int(rate * seconds)
    t = np.arange(n) / rate
    values = {name: np.zeros(n) for name in leads}
    if "I" in values:
        values["I"] = np.ones(n)  # a steady 1 mV: 10 mm above the baseline
    if "II" in values:
        values["II"] = t  # a ramp: 1 mV per second
    return Tracing(leads=values, sample_rate=rate, source_format="csv")


def _points(poly: etree._Element) -> np.ndarray:
    return np.array([[float(v) for v in p.split(",")] for p in poly.get("points").split()])


def _sheet(tr: Tracing, **kw: float) -> etree._Element:
    return etree.fromstring(render_svg(tr, **kw).encode())


def test_the_sheet_is_in_millimetres_with_the_standard_layout_and_a_rhythm_strip() -> None:
    svg = _sheet(_tracing())
    width, height = (float(v) for v in svg.get("viewBox").split()[2:])
    assert svg.get("width") == f"{width:g}mm" and svg.get("height") == f"{height:g}mm"
    assert svg.get("data-speed") == "25" and svg.get("data-gain") == "10"
    traces = svg.findall(".//s:g[@class='ecg-trace']", NS)
    order = [g.get("data-lead") for g in traces]
    assert order == ["I", "aVR", "V1", "V4", "II", "aVL", "V2", "V5", "III", "aVF", "V3", "V6"]
    rhythm = svg.find(".//s:g[@class='ecg-trace ecg-rhythm']", NS)
    assert rhythm is not None and rhythm.get("data-lead") == "II"
    # Each column is 2.5 s at 25 mm/s: 62.5 mm; the rhythm strip is the full 10 s: 250 mm.
    starts = {g.get("data-lead"): float(g.get("data-x0")) for g in traces}
    assert starts["aVR"] - starts["I"] == 62.5 and starts["V4"] - starts["I"] == 187.5
    strip = _points(rhythm.find("s:polyline", NS))
    assert abs((strip[-1, 0] - strip[0, 0]) - 250) < 0.1
    assert [t.text for t in svg.findall(".//s:text[@class='ecg-lead-label']", NS)][:4] == ["I", "aVR", "V1", "V4"]


def test_amplitude_and_time_are_true_to_scale() -> None:
    svg = _sheet(_tracing())
    lead_i = svg.find(".//s:g[@data-lead='I']", NS)
    baseline = float(lead_i.get("data-baseline"))
    pts = _points(lead_i.find("s:polyline", NS))
    assert np.allclose(pts[:, 1], baseline - 10)  # 1 mV = 10 mm
    assert abs(pts[1, 0] - pts[0, 0] - 0.05) < 1e-6  # 1/500 s at 25 mm/s
    assert abs(pts[-1, 0] - pts[0, 0] - 62.5) < 0.1
    # Lead II's ramp in the second row's first column: 2.5 s later it is 2.5 mV (25 mm) up.
    lead_ii = svg.find(".//s:g[@data-lead='II'][@data-t0='0']", NS)
    ramp = _points(lead_ii.find("s:polyline", NS))
    assert abs((ramp[0, 1] - ramp[-1, 1]) - 25) < 0.1


def test_the_grid_has_1_mm_minor_and_5_mm_major_lines() -> None:
    svg = _sheet(_tracing())
    width, height = (float(v) for v in svg.get("viewBox").split()[2:])
    minor = svg.find(".//s:path[@class='ecg-grid-minor']", NS).get("d")
    major = svg.find(".//s:path[@class='ecg-grid-major']", NS).get("d")
    verticals_major = sorted(float(x) for x in re.findall(r"M([\d.]+) 0V", major))
    verticals_minor = sorted(float(x) for x in re.findall(r"M([\d.]+) 0V", minor))
    assert verticals_major[:4] == [0, 5, 10, 15] and all(x % 5 == 0 for x in verticals_major)
    assert verticals_minor[:5] == [1, 2, 3, 4, 6]
    assert len(verticals_major) + len(verticals_minor) == int(width) + 1
    assert width % 5 == 0 and height % 5 == 0


def test_the_calibration_pulse_is_1_mv_for_200_ms() -> None:
    svg = _sheet(_tracing())
    pulses = svg.findall(".//s:path[@class='ecg-cal']", NS)
    assert len(pulses) == 4  # one per row
    assert "v-10h5v10" in pulses[0].get("d")
    double = _sheet(_tracing(), speed_mm_s=50, gain_mm_mv=20)
    assert "v-20h10v20" in double.find(".//s:path[@class='ecg-cal']", NS).get("d")
    assert double.get("data-speed") == "50"
    assert float(double.get("viewBox").split()[2]) > float(svg.get("viewBox").split()[2]) * 1.8


def test_a_missing_lead_is_labelled_not_drawn_and_a_short_recording_draws_what_there_is() -> None:
    svg = _sheet(_tracing(seconds=4, leads=tuple(x for x in LEADS if x != "V5")))
    v5 = svg.find(".//s:g[@data-lead='V5']", NS)
    assert v5.find("s:polyline", NS) is None and "missing" in v5.find("s:text", NS).text
    # 4 s: the last column (7.5-10 s) has nothing, the rhythm strip is 100 mm long.
    assert svg.find(".//s:g[@data-lead='V4']", NS).find("s:polyline", NS) is None
    strip = _points(svg.find(".//s:g[@class='ecg-trace ecg-rhythm']/s:polyline", NS))
    assert abs((strip[-1, 0] - strip[0, 0]) - 100) < 0.1


def test_fast_recordings_are_thinned_to_1000_points_per_second() -> None:
    svg = _sheet(_tracing(rate=2000))
    pts = _points(svg.find(".//s:g[@data-lead='I']/s:polyline", NS))
    assert len(pts) == 2500 and abs(pts[-1, 0] - pts[0, 0] - 62.5) < 0.1
