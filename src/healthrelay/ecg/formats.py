"""ECG files as devices send them (DICOM waveform, HL7 aECG, CSV, WFDB), read into one `Tracing` and written back.

Every reader gives the same thing: the standard leads by their canonical names, in millivolts, at one sample
rate, with what the file says about the patient and the device. Leads a file does not carry are left out,
never derived: quality.check reports them, so a reader sees what was really recorded. A file that cannot be
read raises EcgFormatError naming the problem (which file, which field), never a bare parser exception.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np

from healthrelay.core.errors import InvalidInput, field_error

if TYPE_CHECKING:
    import pydicom

LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

# Device clocks in the county run on local time and most files carry no offset; a time without one is taken
# as China Standard Time (UTC+8, no daylight saving) and stored as UTC.
DEVICE_TZ = ZoneInfo("Asia/Shanghai")

FORMAT_DICOM = "dicom"
FORMAT_AECG = "aecg"
FORMAT_CSV = "csv"
FORMAT_WFDB = "wfdb"

ECG_12_LEAD_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.2"
AMBULATORY_ECG_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.3"
ECG_SOP_CLASSES = {ECG_12_LEAD_STORAGE, GENERAL_ECG_STORAGE, AMBULATORY_ECG_STORAGE}

_SEX_WORDS = {"m": "M", "male": "M", "f": "F", "female": "F", "男": "M", "女": "F"}
_RESIDENT_ID_SHAPE = re.compile(r"^\d{17}[\dXx]$")
_HL7 = "urn:hl7-org:v3"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"

# Volts per unit, so any unit a file states converts to millivolts.
_UNIT_TO_MV: dict[str, float] = {"v": 1000.0, "mv": 1.0, "uv": 0.001, "µv": 0.001, "μv": 0.001, "nv": 1e-6}


@dataclass
class Demographics:
    """What the device file says about the patient; all optional (devices often carry only a name)."""

    name: str = ""
    resident_id: str = ""
    record_number: str = ""
    birth_date: date | None = None
    sex: str = ""  # "M" / "F" / ""


@dataclass
class Tracing:
    """One recording: canonical lead name -> float64 millivolts, all leads the same length."""

    leads: dict[str, np.ndarray]
    sample_rate: float
    source_format: str
    demographics: Demographics = field(default_factory=Demographics)
    acquired_at: datetime | None = None  # UTC-aware
    device: str = ""
    uid: str = ""  # DICOM SOPInstanceUID, aECG id, else sha256 of the bytes: used to spot duplicates

    @property
    def n_samples(self) -> int:
        return max((len(v) for v in self.leads.values()), default=0)

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate if self.sample_rate else 0.0


class EcgFormatError(InvalidInput):
    """The file could not be read as an ECG; the message says what is wrong with it."""

    code = "ecg_unreadable"

    def __init__(self, zh: str, en: str, *, file: str = "file") -> None:
        super().__init__(f"心电文件无法读取：{zh} / unreadable ECG file: {en}",
                         field_errors=[field_error(file, en)], code="ecg_unreadable")


# ------------------------------------------------------------------------------------------ lead names

_LEAD_ALIASES: dict[str, str] = {
    "i": "I", "ii": "II", "iii": "III", "di": "I", "dii": "II", "diii": "III",
    "avr": "aVR", "avl": "aVL", "avf": "aVF",
    **{f"v{i}": f"V{i}" for i in range(1, 7)},
    **{f"c{i}": f"V{i}" for i in range(1, 7)},  # European chest-lead spelling
}
_LEAD_NOISE = re.compile(r"\(.*?\)|\b(lead|leads|ableitung|导联|mdc_ecg_lead_|mdc_ecg_lead)\b|[_\-\s:]", re.I)


def normalise_lead(name: str) -> str | None:
    """Canonical name for the usual spellings ("Lead I (Einthoven)", "AVR", "MDC_ECG_LEAD_AVR", "V1 lead");
    None for anything that is not one of the twelve standard leads (V3R, pacing channels...)."""
    raw = (name or "").strip()
    if raw.upper().startswith("MDC_ECG_LEAD_"):
        raw = raw[len("MDC_ECG_LEAD_"):]
    key = _LEAD_NOISE.sub("", raw.replace("导联", "")).lower()
    return _LEAD_ALIASES.get(key)


def _split_patient_id(value: str) -> tuple[str, str]:
    """(resident_id, record_number): an 18-character national ID shape is a resident ID, anything else a
    hospital record number."""
    value = (value or "").strip()
    if _RESIDENT_ID_SHAPE.match(value):
        return value.upper(), ""
    return "", value


def _unit_factor(unit: str, *, file: str) -> float:
    key = (unit or "").strip().lower().replace("micro", "u").replace("milli", "m")
    key = {"microvolt": "uv", "millivolt": "mv", "volt": "v", "uvolt": "uv", "mvolt": "mv"}.get(key, key)
    if key not in _UNIT_TO_MV:
        raise EcgFormatError(f"无法识别的电压单位 “{unit}”", f"unknown voltage unit '{unit}'", file=file)
    return _UNIT_TO_MV[key]


def _local_to_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=DEVICE_TZ)
    return moment.astimezone(UTC)


def _sha256(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return "sha256:" + digest.hexdigest()


def _finish(leads: dict[str, np.ndarray], *, sample_rate: float, source_format: str, file: str,
            **extra: object) -> Tracing:
    """Common checks every reader needs: at least one lead, one length, a usable sample rate."""
    if not leads:
        raise EcgFormatError("文件中没有任何标准导联（I、II、III、aVR … V6）",
                             "no standard lead (I, II, III, aVR ... V6) found in the file", file=file)
    lengths = {name: len(v) for name, v in leads.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise EcgFormatError(f"各导联采样点数不一致（{detail}）", f"leads have different lengths ({detail})",
                             file=file)
    if min(lengths.values()) == 0:
        raise EcgFormatError("导联中没有采样点", "the leads hold no samples", file=file)
    if not np.isfinite(sample_rate) or sample_rate <= 0:
        raise EcgFormatError(f"采样率 {sample_rate} 无效", f"invalid sample rate {sample_rate}", file=file)
    ordered = {name: np.asarray(leads[name], dtype=np.float64) for name in LEADS if name in leads}
    for name, values in ordered.items():
        if not np.all(np.isfinite(values)):
            raise EcgFormatError(f"{name} 导联含有无效数值", f"lead {name} contains non-numeric values",
                                 file=file)
    return Tracing(leads=ordered, sample_rate=float(sample_rate), source_format=source_format,
                   **extra)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ sniffing

def read_ecg(files: dict[str, bytes]) -> Tracing:
    """Read an upload of one recording: a single DICOM / aECG / CSV file, or a WFDB pair (.hea + .dat)."""
    if not files:
        raise EcgFormatError("没有收到文件", "no file was uploaded")
    by_ext: dict[str, tuple[str, bytes]] = {}
    for name, data in files.items():
        by_ext.setdefault(Path(name).suffix.lower(), (name, data))
    if ".hea" in by_ext or ".dat" in by_ext:
        if ".hea" not in by_ext:
            name = by_ext[".dat"][0]
            raise EcgFormatError(f"WFDB 记录缺少头文件（收到 {name}，缺 .hea）",
                                 f"WFDB record is missing its header (.hea) file; got only {name}", file=name)
        if ".dat" not in by_ext:
            name = by_ext[".hea"][0]
            raise EcgFormatError(f"WFDB 记录缺少信号文件（收到 {name}，缺 .dat）",
                                 f"WFDB record is missing its signal (.dat) file; got only {name}", file=name)
        return read_wfdb(by_ext[".hea"][1], by_ext[".dat"][1])
    if len(files) > 1:
        names = "、".join(files)
        raise EcgFormatError(f"一次只能上传一份心电记录（收到 {names}）",
                             f"upload one recording at a time (got {', '.join(files)})")
    name, data = next(iter(files.items()))
    ext = Path(name).suffix.lower()
    if not data:
        raise EcgFormatError(f"{name} 是空文件", f"{name} is empty", file=name)
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    if data[128:132] == b"DICM" or ext in (".dcm", ".dicom"):
        return read_dicom(data)
    if head.startswith(b"<") or ext == ".xml":
        return read_aecg(data)
    if ext in (".csv", ".txt", ".tsv"):
        return read_csv(data)
    raise EcgFormatError(f"无法识别 {name} 的格式（支持 DICOM、HL7 aECG、CSV、WFDB）",
                         f"cannot tell the format of {name} (DICOM, HL7 aECG, CSV and WFDB are accepted)",
                         file=name)


# ------------------------------------------------------------------------------------------ DICOM

def _dicom_datetime(ds: pydicom.Dataset) -> datetime | None:
    from pydicom.valuerep import DA, DT, TM

    offset = None
    tz_text = str(ds.get("TimezoneOffsetFromUTC", "") or "")
    if re.fullmatch(r"[+-]\d{4}", tz_text):
        sign = 1 if tz_text[0] == "+" else -1
        offset = timezone(sign * timedelta(hours=int(tz_text[1:3]), minutes=int(tz_text[3:5])))
    candidates: list[datetime] = []
    try:
        if ds.get("AcquisitionDateTime"):
            candidates.append(DT(str(ds.AcquisitionDateTime)))
        for date_tag, time_tag in (("ContentDate", "ContentTime"), ("StudyDate", "StudyTime")):
            if ds.get(date_tag):
                day = DA(str(ds.get(date_tag)))
                moment = TM(str(ds.get(time_tag))) if ds.get(time_tag) else None
                candidates.append(datetime.combine(day, moment) if moment else
                                  datetime(day.year, day.month, day.day))
    except ValueError:
        raise EcgFormatError("采集时间格式无效", "the acquisition date/time is malformed", file="dicom") from None
    if not candidates:
        return None
    moment = candidates[0]
    if moment.tzinfo is None and offset is not None:
        moment = moment.replace(tzinfo=offset)
    return _local_to_utc(datetime(moment.year, moment.month, moment.day, moment.hour, moment.minute,
                                  moment.second, moment.microsecond, tzinfo=moment.tzinfo))


def read_dicom(data: bytes | pydicom.Dataset) -> Tracing:
    """12-Lead / General ECG Waveform Storage: the rhythm multiplex group, scaled to mV from its units."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    raw = data if isinstance(data, bytes | bytearray) else b""
    if isinstance(data, bytes | bytearray):
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            ds.get("SOPClassUID")
        except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError, AttributeError):
            raise EcgFormatError("不是有效的 DICOM 文件（可能已损坏或被截断）",
                                 "not a valid DICOM file (damaged or truncated)", file="dicom") from None
    else:
        ds = data
    sop_class = str(ds.get("SOPClassUID", ""))
    if not sop_class and "WaveformSequence" not in ds:
        raise EcgFormatError("不是有效的 DICOM 文件（可能已损坏或被截断）",
                             "not a valid DICOM file (damaged or truncated)", file="dicom")
    if "WaveformSequence" not in ds:
        kind = getattr(ds.get("SOPClassUID"), "name", sop_class) or "unknown"
        raise EcgFormatError(f"该 DICOM 不含心电波形（{kind}）", f"this DICOM holds no ECG waveform ({kind})",
                             file="dicom")
    if sop_class and sop_class not in ECG_SOP_CLASSES:
        kind = getattr(ds.get("SOPClassUID"), "name", sop_class)
        raise EcgFormatError(f"该 DICOM 不是心电波形（{kind}）", f"this DICOM is not an ECG waveform ({kind})",
                             file="dicom")
    groups = list(ds.WaveformSequence)
    # The rhythm group holds the recording; a MEDIAN BEAT group is the device's own derived beat.
    choices = [i for i, g in enumerate(groups) if "MEDIAN" not in str(g.get("MultiplexGroupLabel", "")).upper()]
    if not choices:
        choices = list(range(len(groups)))
    index = max(choices, key=lambda i: int(groups[i].get("NumberOfWaveformSamples", 0) or 0))
    group = groups[index]
    try:
        values = ds.waveform_array(index)  # scaled by sensitivity/baseline/correction into each channel's unit
        rate = float(group.SamplingFrequency)
        channels = list(group.ChannelDefinitionSequence)
    except (AttributeError, ValueError, TypeError, KeyError, IndexError):
        raise EcgFormatError("波形数据不完整（缺少采样率、通道定义或数据被截断）",
                             "the waveform data is incomplete (sampling frequency, channel definitions or "
                             "samples missing or truncated)", file="dicom") from None
    expected = int(group.NumberOfWaveformSamples) * int(group.NumberOfWaveformChannels)
    bytes_per = int(group.WaveformBitsAllocated) // 8
    if len(group.WaveformData) < expected * bytes_per:
        raise EcgFormatError(
            f"波形数据被截断（应有 {expected * bytes_per} 字节，实有 {len(group.WaveformData)} 字节）",
            f"waveform data is truncated ({len(group.WaveformData)} of {expected * bytes_per} bytes)",
            file="dicom")
    leads: dict[str, np.ndarray] = {}
    for col, channel in enumerate(channels):
        label = ""
        if channel.get("ChannelSourceSequence"):
            source = channel.ChannelSourceSequence[0]
            label = str(source.get("CodeMeaning", "") or source.get("CodeValue", ""))
        name = normalise_lead(label) or normalise_lead(str(channel.get("ChannelLabel", "")))
        if name is None or name in leads:
            continue
        unit = "uV"
        if channel.get("ChannelSensitivityUnitsSequence"):
            unit = str(channel.ChannelSensitivityUnitsSequence[0].get("CodeValue", "uV"))
        leads[name] = values[:, col] * _unit_factor(unit, file="dicom")
    name_parts = str(ds.get("PatientName", "") or "").split("^")
    resident_id, record_number = _split_patient_id(str(ds.get("PatientID", "") or ""))
    for other in ds.get("OtherPatientIDsSequence", []) or []:
        rid, rec = _split_patient_id(str(other.get("PatientID", "") or ""))
        resident_id = resident_id or rid
        record_number = record_number or rec
    birth = None
    if ds.get("PatientBirthDate"):
        try:
            birth = datetime.strptime(str(ds.PatientBirthDate), "%Y%m%d").date()
        except ValueError:
            birth = None
    sex = str(ds.get("PatientSex", "") or "").upper()
    demographics = Demographics(name=" ".join(p.strip() for p in name_parts if p.strip()),
                                resident_id=resident_id, record_number=record_number, birth_date=birth,
                                sex=sex if sex in ("M", "F") else "")
    device = " ".join(str(ds.get(t, "") or "") for t in ("Manufacturer", "ManufacturerModelName")).strip()
    uid = str(ds.get("SOPInstanceUID", "") or "") or _sha256(raw)
    return _finish(leads, sample_rate=rate, source_format=FORMAT_DICOM, file="dicom",
                   demographics=demographics, acquired_at=_dicom_datetime(ds), device=device, uid=uid)


def to_dicom(tr: Tracing) -> bytes:
    """Part-10 12-Lead ECG Waveform Storage (General ECG when the rate or length exceeds the 12-lead IOD),
    16-bit samples at 1 µV (coarser only if a lead would overflow)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    names = [n for n in LEADS if n in tr.leads]
    matrix = np.column_stack([tr.leads[n] for n in names]) if names else np.zeros((0, 0))
    peak_uv = float(np.max(np.abs(matrix))) * 1000 if matrix.size else 0.0
    sensitivity = max(1.0, float(np.ceil(peak_uv / 32000.0)))  # µV per count
    counts = np.clip(np.round(matrix * 1000 / sensitivity), -32768, 32767).astype("<i2")
    twelve_lead = 200 <= tr.sample_rate <= 1000 and tr.duration_s <= 16
    sop_class = ECG_12_LEAD_STORAGE if twelve_lead else GENERAL_ECG_STORAGE
    sop_uid = tr.uid if tr.uid and re.fullmatch(r"[0-9.]{1,64}", tr.uid) else generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: Chinese names
    ds.Modality = "ECG"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    d = tr.demographics
    ds.PatientName = d.name
    ds.PatientID = d.resident_id or d.record_number
    if d.resident_id and d.record_number:
        other = Dataset()
        other.PatientID = d.record_number
        other.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = [other]
    ds.PatientBirthDate = d.birth_date.strftime("%Y%m%d") if d.birth_date else ""
    ds.PatientSex = d.sex
    ds.Manufacturer = tr.device[:64]  # the reader joins Manufacturer and model name back into one string
    if tr.acquired_at:
        moment = tr.acquired_at if tr.acquired_at.tzinfo else tr.acquired_at.replace(tzinfo=UTC)
        local = moment.astimezone(DEVICE_TZ)
        ds.AcquisitionDateTime = local.strftime("%Y%m%d%H%M%S.%f")
        ds.TimezoneOffsetFromUTC = "+0800"
        ds.ContentDate = local.strftime("%Y%m%d")
        ds.ContentTime = local.strftime("%H%M%S")
    group = Dataset()
    group.MultiplexGroupLabel = "RHYTHM"
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = len(names)
    group.NumberOfWaveformSamples = int(counts.shape[0])
    group.SamplingFrequency = f"{tr.sample_rate:g}"
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    channels = []
    for name in names:
        source = Dataset()
        source.CodeValue = name
        source.CodingSchemeDesignator = "HEALTHRELAY"
        source.CodeMeaning = f"Lead {name}"
        unit = Dataset()
        unit.CodeValue = "uV"
        unit.CodingSchemeDesignator = "UCUM"
        unit.CodeMeaning = "microvolt"
        channel = Dataset()
        channel.ChannelSourceSequence = [source]
        channel.ChannelSensitivity = f"{sensitivity:g}"
        channel.ChannelSensitivityUnitsSequence = [unit]
        channel.ChannelSensitivityCorrectionFactor = "1"
        channel.ChannelBaseline = "0"
        channel.WaveformBitsStored = 16
        channels.append(channel)
    group.ChannelDefinitionSequence = channels
    group.WaveformData = counts.tobytes()
    ds.WaveformSequence = [group]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ HL7 aECG

def _hl7_time(value: str) -> datetime | None:
    """HL7 TS: YYYYMMDDHHMMSS[.fff][+ZZZZ]."""
    match = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d+)?([+-]\d{4})?", value.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, frac, tz = match.groups()
    try:
        moment = datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
                          int(second or 0), int(round(float(frac or 0) * 1e6)))
    except ValueError:
        return None
    if tz:
        sign = 1 if tz[0] == "+" else -1
        moment = moment.replace(tzinfo=timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[3:5]))))
    return _local_to_utc(moment)


def read_aecg(data: bytes) -> Tracing:
    """HL7 v3 AnnotatedECG: the first series' sequence set; leads coded MDC_ECG_LEAD_*, values origin +
    scale × digits, sample rate from the time sequence's increment."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    try:
        root = etree.fromstring(data, parser=parser)
    except etree.XMLSyntaxError as exc:
        raise EcgFormatError(f"XML 格式错误（第 {exc.lineno} 行）", f"malformed XML (line {exc.lineno})",
                             file="aecg") from None
    if etree.QName(root).localname != "AnnotatedECG" or etree.QName(root).namespace != _HL7:
        raise EcgFormatError("不是 HL7 aECG 文件（根元素应为 urn:hl7-org:v3 的 AnnotatedECG）",
                             "not an HL7 aECG file (the root must be AnnotatedECG in urn:hl7-org:v3)", file="aecg")
    ns = {"v3": _HL7}
    series = root.find("v3:component/v3:series", ns)
    if series is None:
        raise EcgFormatError("aECG 中没有波形序列（series）", "the aECG holds no waveform series", file="aecg")
    rate = None
    leads: dict[str, np.ndarray] = {}
    for sequence in series.iterfind("v3:component/v3:sequenceSet/v3:component/v3:sequence", ns):
        code_el = sequence.find("v3:code", ns)
        value = sequence.find("v3:value", ns)
        code = code_el.get("code", "") if code_el is not None else ""
        if value is None:
            continue
        if code.startswith("TIME_"):
            increment = value.find("v3:increment", ns)
            if increment is not None:
                try:
                    step = float(increment.get("value", "")) * {"s": 1.0, "ms": 0.001}.get(
                        increment.get("unit", "s"), 1.0)
                except ValueError:
                    step = 0.0
                if step <= 0:
                    raise EcgFormatError("时间序列的采样间隔无效", "the time sequence's increment is invalid",
                                         file="aecg")
                rate = 1.0 / step
            continue
        name = normalise_lead(code)
        if name is None:
            continue
        digits_el = value.find("v3:digits", ns)
        origin_el = value.find("v3:origin", ns)
        scale_el = value.find("v3:scale", ns)
        if digits_el is None or scale_el is None:
            raise EcgFormatError(f"{name} 导联缺少 digits 或 scale", f"lead {name} lacks digits or scale",
                                 file="aecg")
        try:
            digits = np.array((digits_el.text or "").split(), dtype=np.float64)
            origin = float(origin_el.get("value", "0")) if origin_el is not None else 0.0
            scale = float(scale_el.get("value", ""))
        except ValueError:
            raise EcgFormatError(f"{name} 导联的数值无效", f"lead {name} has non-numeric values",
                                 file="aecg") from None
        origin_unit = origin_el.get("unit", "uV") if origin_el is not None else "uV"
        factor_scale = _unit_factor(scale_el.get("unit", "uV"), file="aecg")
        factor_origin = _unit_factor(origin_unit, file="aecg")
        if name not in leads:
            leads[name] = origin * factor_origin + digits * scale * factor_scale
    if rate is None:
        raise EcgFormatError("缺少时间序列（无法得知采样率）", "no time sequence, so the sample rate is unknown",
                             file="aecg")
    demographics = Demographics()
    person = root.find(".//v3:subjectDemographicPerson", ns)
    if person is not None:
        name_el = person.find("v3:name", ns)
        if name_el is not None:
            demographics.name = " ".join(t.strip() for t in name_el.itertext() if t.strip())
        gender = person.find("v3:administrativeGenderCode", ns)
        if gender is not None and gender.get("code", "").upper() in ("M", "F"):
            demographics.sex = gender.get("code", "").upper()
        birth = person.find("v3:birthTime", ns)
        if birth is not None and birth.get("value"):
            moment = _hl7_time(birth.get("value", "")[:8])
            demographics.birth_date = moment.astimezone(DEVICE_TZ).date() if moment else None
    for id_el in root.iterfind(".//v3:trialSubject/v3:id", ns):
        rid, rec = _split_patient_id(id_el.get("extension", ""))
        demographics.resident_id = demographics.resident_id or rid
        demographics.record_number = demographics.record_number or rec
    acquired = None
    low = root.find("v3:effectiveTime/v3:low", ns)
    if low is None:
        low = series.find("v3:effectiveTime/v3:low", ns)
    if low is not None and low.get("value"):
        acquired = _hl7_time(low.get("value", ""))
    device = " ".join(t.strip() for path in (".//v3:manufacturerOrganization/v3:name//text()",
                                             ".//v3:manufacturerModelName//text()")
                      for t in series.xpath(path, namespaces=ns) if t.strip())
    id_el = root.find("v3:id", ns)
    uid = ""
    if id_el is not None and id_el.get("root"):
        uid = id_el.get("root", "") + (f"^{id_el.get('extension')}" if id_el.get("extension") else "")
    return _finish(leads, sample_rate=rate, source_format=FORMAT_AECG, file="aecg", demographics=demographics,
                   acquired_at=acquired, device=device, uid=uid or _sha256(data))


def to_aecg(tr: Tracing) -> bytes:
    """A minimal valid AnnotatedECG: one rhythm series, a relative time sequence and one SLIST_PQ per lead in
    µV (origin 0, scale 1 µV)."""
    from lxml import etree
    from pydicom.uid import generate_uid

    def el(parent: etree._Element, tag: str, **attrs: str) -> etree._Element:
        return etree.SubElement(parent, f"{{{_HL7}}}{tag}", {k: v for k, v in attrs.items()})

    root = etree.Element(f"{{{_HL7}}}AnnotatedECG", nsmap={None: _HL7, "xsi": _XSI})
    uid = tr.uid if tr.uid and not tr.uid.startswith("sha256:") else generate_uid()
    uid_root, _, uid_ext = uid.partition("^")
    id_attrs = {"root": uid_root, **({"extension": uid_ext} if uid_ext else {})}
    el(root, "id", **id_attrs)
    el(root, "code", code="93000", codeSystem="2.16.840.1.113883.6.12", codeSystemName="CPT-4")
    stamp = ""
    if tr.acquired_at:
        moment = tr.acquired_at if tr.acquired_at.tzinfo else tr.acquired_at.replace(tzinfo=UTC)
        stamp = moment.astimezone(DEVICE_TZ).strftime("%Y%m%d%H%M%S.%f")[:-3] + "+0800"
        effective = el(root, "effectiveTime")
        el(effective, "low", value=stamp)
    d = tr.demographics
    subject = el(el(el(el(el(root, "componentOf"), "timepointEvent"), "componentOf"), "subjectAssignment"),
                 "subject")
    trial = el(subject, "trialSubject")
    for number in (d.resident_id, d.record_number):
        if number:
            el(trial, "id", root="2.25", extension=number)
    person = el(trial, "subjectDemographicPerson")
    if d.name:
        el(person, "name").text = d.name
    if d.sex:
        el(person, "administrativeGenderCode", code=d.sex, codeSystem="2.16.840.1.113883.5.1")
    if d.birth_date:
        el(person, "birthTime", value=d.birth_date.strftime("%Y%m%d"))
    series = el(el(root, "component"), "series")
    el(series, "code", code="RHYTHM", codeSystem="2.16.840.1.113883.5.4")
    if tr.device:
        author = el(el(series, "author"), "seriesAuthor")
        el(el(author, "manufacturerOrganization"), "name").text = tr.device
    sequence_set = el(el(series, "component"), "sequenceSet")
    time_seq = el(el(sequence_set, "component"), "sequence")
    el(time_seq, "code", code="TIME_RELATIVE", codeSystem="2.16.840.1.113883.5.4")
    value = el(time_seq, "value", **{f"{{{_XSI}}}type": "GLIST_PQ"})
    el(value, "head", value="0", unit="s")
    el(value, "increment", value=repr(1.0 / tr.sample_rate), unit="s")
    for name in LEADS:
        if name not in tr.leads:
            continue
        seq = el(el(sequence_set, "component"), "sequence")
        code = "MDC_ECG_LEAD_" + (name.upper() if name.startswith("a") else name)
        el(seq, "code", code=code, codeSystem="2.16.840.1.113883.6.24", codeSystemName="MDC")
        value = el(seq, "value", **{f"{{{_XSI}}}type": "SLIST_PQ"})
        el(value, "origin", value="0", unit="uV")
        el(value, "scale", value="1", unit="uV")
        counts = np.round(tr.leads[name] * 1000).astype(np.int64)
        el(value, "digits").text = " ".join(map(str, counts.tolist()))
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


# ------------------------------------------------------------------------------------------ CSV

_TIME_COLUMN = re.compile(r"^(time|t|时间|timestamp|sec|seconds|ms|msec)\b.*$", re.I)
_META = re.compile(r"^#\s*([A-Za-z_]+)\s*[=:]\s*(.*?)\s*$")


def read_csv(data: bytes) -> Tracing:
    """Device CSV exports. The accepted dialect:

    - text in UTF-8 (a BOM is fine) or GB18030 (Chinese Windows exports);
    - optional leading comment lines `# key=value`: `sample_rate=500` (Hz), `unit=uV` (uV, mV or V; mV when
      absent), and, as to_csv writes them, `acquired_at` (ISO 8601; local China time when no offset),
      `device`, `name`, `resident_id`, `record_number`, `birth_date` (YYYY-MM-DD), `sex` (M/F);
    - a header row of column names: lead names in any usual spelling (I, Lead II, AVR, V1...), optionally a
      time column (`time`, `t`, `时间`...; seconds unless its name says ms, e.g. `time_ms` or `time (ms)`);
      columns that are neither are ignored;
    - comma, semicolon or tab separated; one row per sample, all numeric.
    The sample rate comes from `# sample_rate` or from a uniformly spaced time column; if both are given they
    must agree within 1%.
    """
    text = None
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    if text is None:
        raise EcgFormatError("CSV 编码无法识别（应为 UTF-8 或 GB18030）",
                             "CSV encoding not recognised (UTF-8 or GB18030 expected)", file="csv")
    meta: dict[str, str] = {}
    lines = text.splitlines()
    body_start = 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            match = _META.match(stripped)
            if match:
                meta[match.group(1).lower()] = match.group(2)
            continue
        body_start = i
        break
    else:
        raise EcgFormatError("CSV 中没有表头和数据", "the CSV has no header row and no data", file="csv")
    body = "\n".join(lines[body_start:])
    first = lines[body_start]
    delimiter = max((",", ";", "\t"), key=first.count)
    rows = [r for r in csv.reader(io.StringIO(body), delimiter=delimiter) if any(c.strip() for c in r)]
    header = [h.strip() for h in rows[0]]
    columns: dict[str, int] = {}
    time_col: int | None = None
    time_scale = 1.0
    for idx, title in enumerate(header):
        lead = normalise_lead(title)
        if lead:
            if lead in columns:
                raise EcgFormatError(f"导联 {lead} 出现了两次", f"lead {lead} appears twice in the header",
                                     file="csv")
            columns[lead] = idx
        elif time_col is None and _TIME_COLUMN.match(title):
            time_col = idx
            time_scale = 0.001 if re.search(r"ms|msec|毫秒", title, re.I) else 1.0
    if not columns:
        raise EcgFormatError(f"表头中没有导联名（表头：{', '.join(header)[:120]}）",
                             f"no lead names in the header row (got: {', '.join(header)[:120]})", file="csv")
    wanted = list(columns.values()) + ([time_col] if time_col is not None else [])
    matrix = np.empty((len(rows) - 1, len(header)), dtype=np.float64)
    matrix[:] = np.nan
    for r, row in enumerate(rows[1:], start=2 + body_start):
        if len(row) < len(header):
            raise EcgFormatError(f"第 {r} 行只有 {len(row)} 列（表头有 {len(header)} 列）",
                                 f"row {r} has {len(row)} columns, the header has {len(header)}", file="csv")
        for c in wanted:
            try:
                matrix[r - 2 - body_start, c] = float(row[c])
            except ValueError:
                raise EcgFormatError(f"第 {r} 行“{header[c]}”列不是数字：{row[c][:20]!r}",
                                     f"row {r}, column '{header[c]}' is not a number: {row[c][:20]!r}",
                                     file="csv") from None
    if matrix.shape[0] < 2:
        raise EcgFormatError("CSV 中没有采样数据", "the CSV holds no samples", file="csv")
    rate: float | None = None
    if "sample_rate" in meta:
        try:
            rate = float(meta["sample_rate"].lower().replace("hz", "").strip())
        except ValueError:
            raise EcgFormatError(f"采样率 “{meta['sample_rate']}” 不是数字",
                                 f"sample_rate '{meta['sample_rate']}' is not a number", file="csv") from None
    if time_col is not None:
        steps = np.diff(matrix[:, time_col]) * time_scale
        step = float(np.median(steps))
        if step <= 0 or np.max(np.abs(steps - step)) > 0.01 * step + 1e-9:
            raise EcgFormatError("时间列间隔不均匀或不递增", "the time column is not evenly spaced and increasing",
                                 file="csv")
        from_time = 1.0 / step
        if rate is not None and abs(from_time - rate) > 0.01 * rate:
            raise EcgFormatError(f"声明的采样率 {rate:g} Hz 与时间列（{from_time:.4g} Hz）不符",
                                 f"stated sample_rate {rate:g} Hz disagrees with the time column "
                                 f"({from_time:.4g} Hz)", file="csv")
        rate = rate or from_time
    if rate is None:
        raise EcgFormatError("缺少采样率（请加 “# sample_rate=500” 行或时间列）",
                             "sample rate unknown (add a '# sample_rate=500' line or a time column)", file="csv")
    factor = _unit_factor(meta.get("unit", "mV"), file="csv")
    leads = {name: matrix[:, idx] * factor for name, idx in columns.items()}
    demographics = Demographics(name=meta.get("name", ""), resident_id=meta.get("resident_id", ""),
                                record_number=meta.get("record_number", ""),
                                sex=_SEX_WORDS.get(meta.get("sex", "").lower(), ""))
    if meta.get("birth_date"):
        try:
            demographics.birth_date = date.fromisoformat(meta["birth_date"])
        except ValueError:
            raise EcgFormatError(f"出生日期 “{meta['birth_date']}” 格式无效",
                                 f"birth_date '{meta['birth_date']}' is not YYYY-MM-DD", file="csv") from None
    acquired = None
    if meta.get("acquired_at"):
        try:
            acquired = _local_to_utc(datetime.fromisoformat(meta["acquired_at"]))
        except ValueError:
            raise EcgFormatError(f"采集时间 “{meta['acquired_at']}” 格式无效",
                                 f"acquired_at '{meta['acquired_at']}' is not an ISO date-time", file="csv") from None
    return _finish(leads, sample_rate=rate, source_format=FORMAT_CSV, file="csv", demographics=demographics,
                   acquired_at=acquired, device=meta.get("device", ""), uid=_sha256(data))


def to_csv(tr: Tracing) -> bytes:
    """The dialect read_csv documents: metadata comments, a header of lead names, values in µV (integers)."""
    out = io.StringIO()
    out.write(f"# sample_rate={tr.sample_rate:g}\n# unit=uV\n")
    d = tr.demographics
    meta = {"acquired_at": tr.acquired_at.isoformat() if tr.acquired_at else "", "device": tr.device,
            "name": d.name, "resident_id": d.resident_id, "record_number": d.record_number,
            "birth_date": d.birth_date.isoformat() if d.birth_date else "", "sex": d.sex}
    for key, value in meta.items():
        if value:
            out.write(f"# {key}={value}\n")
    names = [n for n in LEADS if n in tr.leads]
    out.write(",".join(names) + "\n")
    matrix = np.round(np.column_stack([tr.leads[n] for n in names]) * 1000).astype(np.int64)
    np.savetxt(out, matrix, fmt="%d", delimiter=",")
    return out.getvalue().encode("utf-8")


# ------------------------------------------------------------------------------------------ WFDB

def read_wfdb(header: bytes, signal: bytes) -> Tracing:
    """A PhysioNet WFDB record (.hea + one .dat), via the wfdb package in a private temp folder."""
    import wfdb

    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError:
        text = header.decode("gb18030", errors="replace")
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise EcgFormatError("WFDB 头文件为空", "the WFDB header is empty", file="hea")
    record_name = lines[0].split()[0].split("/")[0]
    if not re.fullmatch(r"[\w\-.]+", record_name):
        raise EcgFormatError("WFDB 头文件的记录名无效", "the WFDB header's record name is invalid", file="hea")
    dat_names = {line.split()[0] for line in lines[1:] if line.split()}
    if len(dat_names) != 1 or not all(re.fullmatch(r"[\w\-.]+", n) for n in dat_names):
        raise EcgFormatError("WFDB 记录须只引用一个信号文件", "the WFDB header must name exactly one signal file",
                             file="hea")
    with tempfile.TemporaryDirectory(prefix="healthrelay-wfdb-") as folder:
        Path(folder, f"{record_name}.hea").write_bytes(header)
        Path(folder, next(iter(dat_names))).write_bytes(signal)
        try:
            record = wfdb.rdrecord(str(Path(folder, record_name)))
        except Exception as exc:  # wfdb raises bare ValueError/IndexError/... for damaged records
            raise EcgFormatError("WFDB 记录无法解析（头文件与信号文件不匹配或已损坏）",
                                 f"the WFDB record cannot be parsed ({type(exc).__name__}: header and signal "
                                 "do not match or are damaged)", file="dat") from None
    if record.p_signal is None:
        raise EcgFormatError("WFDB 记录中没有信号", "the WFDB record holds no signal", file="dat")
    expected = int(record.sig_len or 0)
    if record.p_signal.shape[0] < expected or expected == 0:
        raise EcgFormatError("WFDB 信号文件被截断", "the WFDB signal file is truncated", file="dat")
    leads: dict[str, np.ndarray] = {}
    for idx, label in enumerate(record.sig_name or []):
        name = normalise_lead(label)
        if name and name not in leads:
            unit = (record.units or ["mV"] * (idx + 1))[idx] or "mV"
            leads[name] = record.p_signal[:, idx] * _unit_factor(unit, file="hea")
    meta: dict[str, str] = {}
    # Comments are read from our own decoding of the header: wfdb reads headers as ASCII and drops the rest
    # (Chinese names).
    comments = [line.lstrip()[1:] for line in text.splitlines() if line.lstrip().startswith("#")]
    for comment in comments:
        match = re.match(r"^\s*<?([A-Za-z_ ]+)>?\s*[:=]\s*(.*?)\s*$", comment)
        if match:
            meta[match.group(1).strip().lower().replace(" ", "_")] = match.group(2)
    demographics = Demographics(name=meta.get("name", ""), resident_id=meta.get("resident_id", ""),
                                record_number=meta.get("record_number", ""),
                                sex=_SEX_WORDS.get(meta.get("sex", "").lower(), ""))
    try:
        demographics.birth_date = date.fromisoformat(meta["birth_date"]) if meta.get("birth_date") else None
    except ValueError:
        demographics.birth_date = None
    acquired = None
    if record.base_date and record.base_time:
        acquired = _local_to_utc(datetime.combine(record.base_date, record.base_time))
    return _finish(leads, sample_rate=float(record.fs), source_format=FORMAT_WFDB, file="hea",
                   demographics=demographics, acquired_at=acquired, device=meta.get("device", ""),
                   uid=_sha256(header, signal))


def to_wfdb(tr: Tracing, record: str = "ecg") -> dict[str, bytes]:
    """{"<record>.hea", "<record>.dat"}: format 16 at 1 µV per count (1000 counts per mV); the acquisition time
    as local base date/time, demographics as `key: value` comments."""
    import wfdb

    if not re.fullmatch(r"[A-Za-z0-9_\-]+", record):
        raise EcgFormatError("记录名只能含字母、数字、下划线和连字符",
                             "record names may contain only letters, digits, _ and -", file="record")
    names = [n for n in LEADS if n in tr.leads]
    signal = np.column_stack([tr.leads[n] for n in names])
    peak = float(np.max(np.abs(signal))) if signal.size else 0.0
    gain = 1000.0 if peak < 32.0 else float(np.floor(32000.0 / peak))
    d = tr.demographics
    comments = [f"{k}: {v}" for k, v in (("name", d.name), ("resident_id", d.resident_id),
                                         ("record_number", d.record_number),
                                         ("birth_date", d.birth_date.isoformat() if d.birth_date else ""),
                                         ("sex", d.sex), ("device", tr.device)) if v]
    base_date = base_time = None
    if tr.acquired_at:
        moment = tr.acquired_at if tr.acquired_at.tzinfo else tr.acquired_at.replace(tzinfo=UTC)
        local = moment.astimezone(DEVICE_TZ).replace(tzinfo=None)
        base_date, base_time = local.date(), local.time()
    with tempfile.TemporaryDirectory(prefix="healthrelay-wfdb-") as folder:
        wfdb.wrsamp(record, fs=tr.sample_rate, units=["mV"] * len(names), sig_name=names,
                    d_signal=np.round(signal * gain).astype(np.int64), fmt=["16"] * len(names),
                    adc_gain=[gain] * len(names), baseline=[0] * len(names), comments=comments,
                    base_date=base_date, base_time=base_time, write_dir=folder)
        return {f"{record}.hea": Path(folder, f"{record}.hea").read_bytes(),
                f"{record}.dat": Path(folder, f"{record}.dat").read_bytes()}
