"""Recordings that should not be measured are flagged, each flag naming the lead and the value."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from healthrelay.ecg.formats import read_ecg
from healthrelay.ecg.measure import EcgNotMeasurable, measure
from healthrelay.ecg.quality import QualityFlag, check, is_measurable
from healthrelay.ecg.synthetic import ANTERIOR_STEMI, INFERIOR_STEMI, synthetic_12_lead


def _codes(flags: list[QualityFlag]) -> set[tuple[str, str]]:
    return {(f.code, f.lead) for f in flags}


@pytest.mark.parametrize("noise_mv", [0.0, 0.01, 0.03])
@pytest.mark.parametrize("heart_rate", [50, 120])
def test_good_recordings_raise_no_flag(noise_mv: float, heart_rate: float) -> None:
    assert check(synthetic_12_lead(heart_rate=heart_rate, noise_mv=noise_mv)) == []


@pytest.mark.parametrize("st", [INFERIOR_STEMI, ANTERIOR_STEMI])
def test_st_elevation_is_not_mistaken_for_clipping(st: dict[str, float]) -> None:
    assert check(synthetic_12_lead(st_elevation_mv=st)) == []


def test_real_device_recording_is_measurable() -> None:
    with open(get_testdata_file("waveform_ecg.dcm"), "rb") as fh:
        tr = read_ecg({"ecg.dcm": fh.read()})
    assert is_measurable(check(tr))


def test_flat_lead_is_flagged_and_measurement_refused() -> None:
    tr = synthetic_12_lead(noise_mv=0.01)
    tr.leads["V3"] = np.full(tr.n_samples, 0.02) + np.random.default_rng(0).normal(0, 0.002, tr.n_samples)
    flags = check(tr)
    assert _codes(flags) == {("flat_line", "V3")}
    assert flags[0].blocking and "V3" in flags[0].message and "flat" in flags[0].message
    assert not is_measurable(flags)
    with pytest.raises(EcgNotMeasurable) as err:
        measure(tr)
    assert err.value.status_code == 422 and err.value.code == "ecg_not_measurable"
    assert "lead V3 is flat" in err.value.message
    assert [e["field"] for e in err.value.field_errors] == ["V3"]


def test_electrode_off_for_part_of_the_recording() -> None:
    tr = synthetic_12_lead(noise_mv=0.01)
    tr.leads["II"][1000:2000] = 0.0
    flags = check(tr)
    assert _codes(flags) == {("flat_line", "II")}
    assert "2.0 s" in flags[0].message


@pytest.mark.parametrize("rate", [100, 200, 4000])
def test_sample_rate_outside_the_band_is_flagged(rate: int) -> None:
    flags = check(synthetic_12_lead(sample_rate=rate))
    assert ("sample_rate", "") in _codes(flags)
    assert f"{rate} Hz" in next(f.message for f in flags if f.code == "sample_rate")
    assert not is_measurable(flags)


def test_missing_lead_is_flagged_not_derived() -> None:
    tr = synthetic_12_lead()
    del tr.leads["aVL"]
    flags = check(tr)
    assert _codes(flags) == {("missing_lead", "aVL")}
    assert "aVL" not in tr.leads
    with pytest.raises(EcgNotMeasurable, match="lead aVL is missing"):
        measure(tr)


def test_short_recording_is_flagged() -> None:
    flags = check(synthetic_12_lead(duration_s=5))
    assert _codes(flags) == {("too_short", "")}
    assert "5.0 s" in flags[0].message


def test_clipped_lead_is_flagged() -> None:
    tr = synthetic_12_lead(noise_mv=0.01)
    tr.leads["V4"] = np.clip(tr.leads["V4"], -5.0, 0.9)
    flags = check(tr)
    assert _codes(flags) == {("saturated", "V4")}
    assert "0.90 mV" in flags[0].message and not is_measurable(flags)


def test_noise_warns_then_blocks() -> None:
    """0.08 mV of tremor: a warning beside the measurements; 0.3 mV: no automatic measurement."""
    warned = check(synthetic_12_lead(noise_mv=0.08))
    assert {f.code for f in warned} == {"noisy"} and is_measurable(warned)
    blocked = check(synthetic_12_lead(noise_mv=0.3))
    assert {f.code for f in blocked} == {"noisy"} and not is_measurable(blocked)
    assert len(blocked) == 12 and "noise" in blocked[0].message


def test_wrong_unit_is_flagged() -> None:
    tr = synthetic_12_lead()
    tr.leads = {name: values * 1000 for name, values in tr.leads.items()}  # µV read as mV
    flags = check(tr)
    assert {f.code for f in flags} == {"amplitude"} and len(flags) == 12
    assert "wrong unit" in flags[0].message


def test_unequal_lengths_are_flagged() -> None:
    tr = synthetic_12_lead()
    tr.leads["V6"] = tr.leads["V6"][:-100]
    assert ("unequal_length", "") in _codes(check(tr))


def test_flag_survives_storage_as_a_dict() -> None:
    flag = check(synthetic_12_lead(sample_rate=100))[0]
    assert QualityFlag.from_dict(flag.as_dict()) == flag

