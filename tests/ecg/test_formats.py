"""Reading ECG files the way devices send them, writing them back, and refusing broken files by name."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from healthrelay.ecg import formats
from healthrelay.ecg.formats import LEADS, Demographics, EcgFormatError, read_ecg
from healthrelay.ecg.synthetic import synthetic_12_lead

SAMPLE_DICOM = get_testdata_file("waveform_ecg.dcm")
# Every writer stores whole microvolts (DICOM, aECG, CSV, WFDB at 1000 counts/mV): half a count is the most a
# sample may move on the way out and back in.
QUANTISATION_MV = 0.0005 + 1e-9


def _dicom_bytes() -> bytes:
    with open(SAMPLE_DICOM, "rb") as fh:
        return fh.read()


def _tracing() -> formats.Tracing:
    return synthetic_12_lead(heart_rate=80, seed=3, noise_mv=0.01, demographics=Demographics(
        name="王秀英", resident_id="33010019560308122X", record_number="MR-0042", birth_date=date(1956, 3, 8),
        sex="F"), acquired_at=datetime(2026, 3, 1, 2, 30, 15, tzinfo=UTC))


def test_pydicom_sample_ecg_reads_as_twelve_leads_in_millivolts() -> None:
    """pydicom's waveform_ecg.dcm: a Mortara 10 s 12-lead at 1000 Hz (plus a median-beat group we skip)."""
    tr = read_ecg({"waveform_ecg.dcm": _dicom_bytes()})
    assert tr.source_format == "dicom"
    assert list(tr.leads) == list(LEADS)  # "Lead I (Einthoven)" ... "Lead V6" normalised
    assert tr.sample_rate == 1000 and tr.n_samples == 10000 and tr.duration_s == 10
    ds = pydicom.dcmread(SAMPLE_DICOM)
    microvolts = ds.waveform_array(0)[:, 1]
    assert np.allclose(tr.leads["II"], microvolts / 1000)  # the file's unit is µV; ours is mV
    assert 0.5 < np.ptp(tr.leads["II"]) < 3  # a human lead II, in mV
    assert tr.demographics.record_number == "642341" and tr.demographics.resident_id == ""
    assert tr.demographics.birth_date == date(1971, 1, 23) and tr.demographics.sex == "F"
    assert tr.device == "Mortara Instrument, Inc. el250"
    assert tr.uid == ds.SOPInstanceUID
    # 2013-01-25 10:59:19 with no offset in the file: taken as China time, stored as UTC.
    assert tr.acquired_at == datetime(2013, 1, 25, 2, 59, 19, tzinfo=UTC)


@pytest.mark.parametrize(("spelling", "lead"), [
    ("Lead I (Einthoven)", "I"), ("II", "II"), ("lead III", "III"), ("AVR", "aVR"), ("aVL", "aVL"),
    ("MDC_ECG_LEAD_AVF", "aVF"), ("V1 lead", "V1"), ("C2", "V2"), ("v6", "V6"), ("I导联", "I"),
    ("Lead aVF (Goldberger)", "aVF"), ("V3R", None), ("Pacing", None), ("", None),
])
def test_lead_names_are_normalised(spelling: str, lead: str | None) -> None:
    assert formats.normalise_lead(spelling) == lead


@pytest.mark.parametrize("fmt", ["dicom", "aecg", "csv", "wfdb"])
def test_every_format_round_trips_samples_and_patient(fmt: str) -> None:
    tr = _tracing()
    files = {"dicom": lambda t: {"ecg.dcm": formats.to_dicom(t)}, "aecg": lambda t: {"ecg.xml": formats.to_aecg(t)},
             "csv": lambda t: {"ecg.csv": formats.to_csv(t)}, "wfdb": formats.to_wfdb}[fmt](tr)
    back = read_ecg(files)
    assert back.source_format == fmt
    assert list(back.leads) == list(LEADS)
    assert back.sample_rate == tr.sample_rate and back.n_samples == tr.n_samples
    worst = max(float(np.max(np.abs(back.leads[name] - tr.leads[name]))) for name in LEADS)
    assert worst <= QUANTISATION_MV
    assert back.demographics == tr.demographics
    assert back.acquired_at is not None and abs((back.acquired_at - tr.acquired_at).total_seconds()) < 0.01
    assert back.device == tr.device


def test_dicom_written_is_a_12_lead_ecg_and_reads_back_from_the_pydicom_sample() -> None:
    original = read_ecg({"a.dcm": _dicom_bytes()})
    data = formats.to_dicom(original)
    assert data[128:132] == b"DICM"
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    assert ds.SOPClassUID == formats.ECG_12_LEAD_STORAGE and ds.PatientID == "642341"
    back = read_ecg({"no-extension": data})  # recognised by its preamble
    assert back.uid == original.uid
    assert max(float(np.max(np.abs(back.leads[n] - original.leads[n]))) for n in LEADS) <= QUANTISATION_MV


def test_csv_dialects_time_column_microvolts_semicolons_and_gb18030() -> None:
    text = "# unit=uV\n时间(ms);I导联;II;III;aVR;aVL;aVF;V1;V2;V3;V4;V5;V6;备注\n"
    text += "".join(f"{i * 2};{i};{-i};0;5;6;7;8;9;10;11;12;13;x\n" for i in range(600))
    tr = read_ecg({"export.csv": text.encode("gb18030")})
    assert tr.sample_rate == pytest.approx(500)
    assert tr.leads["I"][10] == pytest.approx(0.010) and tr.leads["II"][10] == pytest.approx(-0.010)
    assert tr.n_samples == 600


def test_csv_needs_a_sample_rate() -> None:
    with pytest.raises(EcgFormatError) as err:
        read_ecg({"a.csv": b"I,II\n1,2\n3,4\n"})
    assert err.value.status_code == 422 and err.value.code == "ecg_unreadable"
    assert "sample rate unknown" in err.value.message and "采样率" in err.value.message


def test_csv_names_the_bad_cell() -> None:
    with pytest.raises(EcgFormatError, match=r"row 5, column 'II' is not a number"):
        read_ecg({"a.csv": b"# sample_rate=500\nI,II\n1,2\n3,4\n5,oops\n"})


def test_csv_stated_rate_must_agree_with_time_column() -> None:
    with pytest.raises(EcgFormatError, match="disagrees with the time column"):
        read_ecg({"a.csv": b"# sample_rate=500\ntime,I\n0,1\n0.004,2\n0.008,3\n"})


def test_truncated_dicom_is_refused_naming_the_problem() -> None:
    data = _dicom_bytes()
    with pytest.raises(EcgFormatError) as err:
        read_ecg({"cut.dcm": data[: len(data) // 2]})
    assert "truncated" in err.value.message or "incomplete" in err.value.message


def test_garbage_and_non_ecg_dicom_are_refused() -> None:
    with pytest.raises(EcgFormatError, match="not a valid DICOM file"):
        read_ecg({"x.dcm": b"\x00\x01garbage" * 50})
    with open(get_testdata_file("CT_small.dcm"), "rb") as fh:
        ct = fh.read()
    with pytest.raises(EcgFormatError, match="holds no ECG waveform"):
        read_ecg({"ct.dcm": ct})


def test_aecg_errors_name_the_problem() -> None:
    good = formats.to_aecg(_tracing())
    with pytest.raises(EcgFormatError, match=r"malformed XML \(line"):
        read_ecg({"a.xml": good[: len(good) // 2]})
    with pytest.raises(EcgFormatError, match="not an HL7 aECG"):
        read_ecg({"a.xml": b"<?xml version='1.0'?><note>hi</note>"})
    no_time = good.replace(b"TIME_RELATIVE", b"SOMETHING_ELSE")
    with pytest.raises(EcgFormatError, match="sample rate is unknown"):
        read_ecg({"a.xml": no_time})


def test_wfdb_pair_missing_half_is_named() -> None:
    files = formats.to_wfdb(_tracing(), record="rec1")
    with pytest.raises(EcgFormatError, match=r"missing its signal \(\.dat\) file; got only rec1\.hea"):
        read_ecg({"rec1.hea": files["rec1.hea"]})
    with pytest.raises(EcgFormatError, match=r"missing its header \(\.hea\) file; got only rec1\.dat"):
        read_ecg({"rec1.dat": files["rec1.dat"]})
    with pytest.raises(EcgFormatError, match="truncated|cannot be parsed"):
        read_ecg({"rec1.hea": files["rec1.hea"], "rec1.dat": files["rec1.dat"][:1000]})


def test_unknown_empty_and_several_files_are_refused() -> None:
    with pytest.raises(EcgFormatError, match="cannot tell the format of scan.pdf"):
        read_ecg({"scan.pdf": b"%PDF-1.7 ..."})
    with pytest.raises(EcgFormatError, match="a.csv is empty"):
        read_ecg({"a.csv": b""})
    with pytest.raises(EcgFormatError, match="no file was uploaded"):
        read_ecg({})
    with pytest.raises(EcgFormatError, match="one recording at a time"):
        read_ecg({"a.csv": b"x", "b.csv": b"y"})


def test_a_file_without_any_standard_lead_is_refused() -> None:
    with pytest.raises(EcgFormatError, match="no lead names in the header"):
        read_ecg({"a.csv": b"# sample_rate=500\nfoo,bar\n1,2\n"})
