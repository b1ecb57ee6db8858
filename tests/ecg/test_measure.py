"""The automatic read against synthetic ECGs whose true values are known, and the codes it suggests."""

from __future__ import annotations

import itertools
import json

import pytest
from pydicom.data import get_testdata_file

from healthrelay.ecg import codes
from healthrelay.ecg.formats import read_ecg
from healthrelay.ecg.measure import EcgNotMeasurable, Measurements, measure, suggest_codes
from healthrelay.ecg.quality import check
from healthrelay.ecg.synthetic import (
    ANTERIOR_STEMI,
    INFERIOR_STEMI,
    neurokit_12_lead,
    synthetic_12_lead,
    synthetic_with_truth,
)

# Heart rates 50-120, three seeds, clean and with 0.03 mV of noise (white + 50 Hz hum + 0.3 Hz drift), the QRS
# axis turning through -20, 30, 60 and 90 degrees.
GRID = [(hr, seed, noise, (-20, 30, 60, 90)[i % 4]) for i, (hr, seed, noise) in
        enumerate(itertools.product((50, 60, 75, 90, 105, 120), (0, 1, 2), (0.0, 0.03)))]


@pytest.mark.parametrize(("heart_rate", "seed", "noise_mv", "axis"), GRID)
def test_measurements_within_stated_tolerances(heart_rate: float, seed: int, noise_mv: float, axis: float) -> None:
    """Tolerances: heart rate +-2 bpm, RR +-20 ms, PR +-20 ms, QRS +-20 ms, QT +-30 ms, QTc (Bazett) +-35 ms,
    frontal QRS axis +-10 degrees, ST level at J+60 ms +-0.05 mV in every lead. Calipers on paper at 25 mm/s
    read to half a small square (20 ms) and 0.05 mV; on this grid the mean errors are PR +4, QRS +7, QT +1 ms
    and the largest are 7, 13 and 10 ms (bench/ecg_accuracy.py prints the figures)."""
    tr, truth = synthetic_with_truth(heart_rate=heart_rate, seed=seed, noise_mv=noise_mv, axis_deg=axis)
    m = measure(tr)
    assert m.heart_rate_bpm == pytest.approx(truth.heart_rate_bpm, abs=2)
    assert m.rr_ms == pytest.approx(truth.rr_ms, abs=20)
    assert m.pr_ms == pytest.approx(truth.pr_ms, abs=20)
    assert m.qrs_ms == pytest.approx(truth.qrs_ms, abs=20)
    assert m.qt_ms == pytest.approx(truth.qt_ms, abs=30)
    assert m.qtc_ms == pytest.approx(truth.qtc_ms, abs=35)
    assert m.qrs_axis_deg == pytest.approx(truth.qrs_axis_deg, abs=10)
    assert set(m.st_mv) == set(truth.st_mv)
    for lead, level in truth.st_mv.items():
        assert m.st_mv[lead] == pytest.approx(level, abs=0.05), lead
    assert m.rhythm_regular and m.p_waves


@pytest.mark.parametrize("heart_rate", [60, 100])
def test_heart_rate_on_neurokits_own_simulator(heart_rate: float) -> None:
    """nk.ecg_simulate(method="multileads") varies its rate by 1 bpm SD around the asked rate."""
    m = measure(neurokit_12_lead(heart_rate=heart_rate, seed=4))
    assert m.heart_rate_bpm == pytest.approx(heart_rate, abs=3)


@pytest.mark.parametrize(("st", "territory"), [(INFERIOR_STEMI, "inferior"), (ANTERIOR_STEMI, "anterior")])
def test_stemi_is_suggested_with_its_territory(st: dict[str, float], territory: str) -> None:
    tr = synthetic_12_lead(heart_rate=88, seed=5, noise_mv=0.02, st_elevation_mv=st)
    suggested = suggest_codes(measure(tr), check(tr))
    stemi = [c for c in suggested if c.startswith("stemi_")]
    assert stemi == [f"stemi_{territory}"]
    assert codes.BY_CODE[stemi[0]].critical and codes.is_stemi(suggested)
    assert "st_elevation" in suggested and "normal" not in suggested


def test_normal_ecg_is_suggested_normal() -> None:
    tr = synthetic_12_lead(heart_rate=72, seed=2, noise_mv=0.02)
    assert suggest_codes(measure(tr), check(tr)) == ["sinus_rhythm", "normal_conduction", "normal_st_t", "normal"]


def test_atrial_fibrillation_irregular_without_p_waves() -> None:
    tr, truth = synthetic_with_truth(heart_rate=95, seed=3, noise_mv=0.02, rhythm="af")
    m = measure(tr)
    assert not m.rhythm_regular and not m.p_waves and m.pr_ms is None
    assert m.heart_rate_bpm == pytest.approx(truth.heart_rate_bpm, abs=3)
    suggested = suggest_codes(m, check(tr))
    assert "atrial_fibrillation" in suggested and "af" in suggested and "sinus_rhythm" not in suggested


def test_first_degree_av_block() -> None:
    tr = synthetic_12_lead(heart_rate=70, seed=1, noise_mv=0.02, pr_ms=250)
    m = measure(tr)
    assert m.pr_ms == pytest.approx(250, abs=20)
    suggested = suggest_codes(m, check(tr))
    assert "av_block_1" in suggested and "abnormal" in suggested


def test_long_qt_uses_the_limit_for_the_sex() -> None:
    tr = synthetic_12_lead(heart_rate=70, seed=1, noise_mv=0.02, qtc_ms=475)
    m = measure(tr)
    assert m.qtc_ms == pytest.approx(475, abs=35)
    long_qt = synthetic_12_lead(heart_rate=70, seed=1, noise_mv=0.02, qtc_ms=530)
    assert "long_qt" in suggest_codes(measure(long_qt), check(long_qt), sex="F")
    assert "long_qt" not in suggest_codes(measure(synthetic_12_lead(seed=1)), [], sex="F")


def test_wide_qrs_is_abnormal_and_left_to_the_reader() -> None:
    tr = synthetic_12_lead(heart_rate=70, seed=1, noise_mv=0.02, qrs_ms=160)
    m = measure(tr)
    assert m.qrs_ms >= 120
    suggested = suggest_codes(m, check(tr))
    assert "abnormal" in suggested and "normal_conduction" not in suggested
    assert not {"rbbb", "lbbb"} & set(suggested)


@pytest.mark.parametrize(("heart_rate", "rhythm"), [(50, "sinus_bradycardia"), (118, "sinus_tachycardia")])
def test_sinus_rate_names(heart_rate: float, rhythm: str) -> None:
    tr = synthetic_12_lead(heart_rate=heart_rate, seed=1, noise_mv=0.02)
    suggested = suggest_codes(measure(tr), check(tr))
    assert suggested[0] == rhythm and suggested[-1] == "borderline"


def test_nothing_is_suggested_over_blocking_flags() -> None:
    m = measure(synthetic_12_lead(seed=1))
    flags = check(synthetic_12_lead(sample_rate=100))
    assert suggest_codes(m, flags) == []


def test_real_device_recording_is_measured_plausibly() -> None:
    """pydicom's Mortara recording: a regular rhythm around 60/min with normal intervals."""
    with open(get_testdata_file("waveform_ecg.dcm"), "rb") as fh:
        m = measure(read_ecg({"ecg.dcm": fh.read()}))
    assert 55 < m.heart_rate_bpm < 70 and m.rhythm_regular
    assert 120 < m.pr_ms < 200 and 60 < m.qrs_ms < 120 and 340 < m.qt_ms < 450
    assert -30 < m.qrs_axis_deg < 90
    assert "neurokit2" in m.method


def test_measurements_survive_json_storage() -> None:
    m = measure(synthetic_12_lead(seed=1, st_elevation_mv=INFERIOR_STEMI))
    back = Measurements.from_dict(json.loads(json.dumps(m.as_dict())))
    assert back == m
    assert suggest_codes(back) == suggest_codes(m)


def test_too_few_beats_is_not_measured() -> None:
    """Asystole-like pauses: two beats in 9 s cannot give a rate."""
    tr = synthetic_12_lead(heart_rate=12, duration_s=9, seed=1, noise_mv=0.02)
    with pytest.raises(EcgNotMeasurable, match="QRS complexes found"):
        measure(tr)


def _reading(**st: float) -> Measurements:
    return Measurements(heart_rate_bpm=75, rr_ms=800, pr_ms=160, qrs_ms=90, qt_ms=380, qtc_ms=425,
                        qrs_axis_deg=50, st_mv={lead: st.get(lead, 0.0) for lead in
                                                ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4",
                                                 "V5", "V6")})


@pytest.mark.parametrize(("st", "expected"), [
    ({"I": 0.15, "aVL": 0.12}, ["stemi_lateral"]),
    ({"V2": 0.15, "V3": 0.18, "V1": 0.05}, []),  # under the 0.2 mV V2-V3 limit
    ({"V2": 0.25, "V3": 0.22}, ["stemi_anterior"]),
    ({"V1": 0.12, "V4": 0.11}, ["stemi_anterior"]),
    ({"II": 0.12}, []),  # one lead is not enough
    ({"II": 0.12, "aVF": 0.1, "V5": 0.1, "V6": 0.1}, ["stemi_inferior", "stemi_lateral"]),
])
def test_stemi_criterion_per_territory(st: dict[str, float], expected: list[str]) -> None:
    suggested = suggest_codes(_reading(**st))
    assert [c for c in suggested if c.startswith("stemi_")] == expected
    assert ("normal" in suggested) == (not expected)
