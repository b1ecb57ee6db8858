"""The automatic preliminary read: intervals, axis and ST levels, and the report codes they suggest.

The reader confirms or corrects every number; the measurements only save them the caliper work. neurokit2 is
imported inside the functions (about 5 s): the web app must not pay for it at start-up.

How (and why this way; figures from bench/ecg_accuracy.py against synthetic ECGs with known truth):
- every lead is cleaned with `nk.ecg_clean` (0.5 Hz high-pass, 50 Hz mains notch) and R peaks are found
  on lead II with `nk.ecg_peaks` (method "neurokit");
- beats are the R peaks `nk.ecg_peaks` finds in at least half of the leads (one lead alone takes tall T waves
  for beats when its QRS is small);
- P onset, QRS onset/offset and T end are delineated on lead II (or, when its R wave is small or smaller than
  its S, the lead with the tallest R among V5, I, aVF, V6, V4) by two of neurokit's delineators, "prominence"
  and "dwt", each used for the points it places best (FIDUCIAL_METHODS); intervals are medians over beats;
- ST levels and the axis are read on the raw leads (40 Hz low-pass only: a high-pass filter would bend the
  ST segment), each beat against its own PR-segment baseline (interpolated to the next beat's, which removes
  slow drift), then the median over beats.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from healthrelay.core.errors import InvalidInput, field_error
from healthrelay.ecg import codes
from healthrelay.ecg.formats import Tracing
from healthrelay.ecg.quality import QualityFlag, check, is_measurable

# Rhythm: RR coefficient of variation over 10% is "irregular" (respiratory sinus arrhythmia in adults is
# rarely above it; atrial fibrillation is far above it).
IRREGULAR_RR_CV = 0.10
# P waves count as present when found before at least half the beats with a steady PR (SD under 30 ms):
# in atrial fibrillation the delineators "find" P onsets in the fibrillatory waves at random distances.
P_PRESENT_SHARE = 0.5
P_STEADY_SD_MS = 30.0
# Rate limits for the sinus rhythm names (per minute).
TACHY_BPM = 100.0
BRADY_BPM = 60.0
# Conduction and repolarisation limits (ms).
PR_LONG_MS = 200.0
QRS_WIDE_MS = 120.0
QTC_LONG_MEN_MS = 470.0   # the usual upper limits of the Bazett QTc: 450-470 ms in men, 460-480 in women; the
QTC_LONG_WOMEN_MS = 480.0  # higher ends are used so the suggestion is specific (the reader can still add it)
# STEMI criterion (the fourth universal definition, simplified to the limb/chest leads the codes name):
# new ST elevation at the J point (read at J+60 ms) >= 0.1 mV in two contiguous leads, >= 0.2 mV in V2-V3.
STEMI_ST_MV = 0.1
STEMI_ST_V2_V3_MV = 0.2
ST_DEPRESSION_MV = -0.1
# Where ST is read after the J point, and the PR-segment window before the QRS used as the baseline.
ST_OFFSET_MS = 60.0
PR_BASELINE_WINDOW_MS = (30.0, 10.0)


@dataclass
class Measurements:
    heart_rate_bpm: float
    rr_ms: float
    pr_ms: float | None
    qrs_ms: float | None
    qt_ms: float | None
    qtc_ms: float | None  # Bazett: QT / sqrt(RR in seconds)
    qrs_axis_deg: float | None  # frontal plane, from the net QRS area in I and aVF
    st_mv: dict[str, float] = field(default_factory=dict)  # ST level at J+60 ms vs the PR baseline, per lead
    rhythm_regular: bool = True
    method: str = ""
    p_waves: bool = True  # consistent P waves before the QRS complexes

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurements:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in d.items() if k in known}
        values["st_mv"] = {str(k): float(v) for k, v in (d.get("st_mv") or {}).items()}
        return cls(**values)


class EcgNotMeasurable(InvalidInput):
    """Blocking quality problems (or no detectable beats): the tracing goes to the reader unmeasured."""

    code = "ecg_not_measurable"

    def __init__(self, flags: Iterable[QualityFlag], *, reason_zh: str = "", reason_en: str = "") -> None:
        self.flags = [f for f in flags if f.blocking]
        if self.flags:
            detail = "；".join(f.message for f in self.flags)
            message = f"心电图质量不足，无法自动测量 / the ECG cannot be measured automatically: {detail}"
        else:
            message = f"无法自动测量：{reason_zh} / the ECG cannot be measured automatically: {reason_en}"
        super().__init__(message, field_errors=[field_error(f.lead or "tracing", f.message) for f in self.flags]
                         or [field_error("tracing", reason_en)], code="ecg_not_measurable")


def _as_float_array(values: Any, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan)
    out = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if len(out) < n:
        out = np.concatenate([out, np.full(n - len(out), np.nan)])
    return out[:n]


def _nanmedian(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else math.nan


# Which delineator places which point (per-beat error against the synthetic truth; bench/ecg_accuracy.py):
# - "dwt" finds true wave boundaries with a bias that hardly depends on the QRS width: QRS end +5..+9 ms,
#   T end -4..-7 ms (SD 3), but its QRS onset is 9-15 ms early;
# - "prominence" returns the Q and S *peaks* as the QRS onset and end (0..+13 ms late and 10..27 ms early for
#   QRS 80..140 ms: a wide QRS would read far too narrow) and ends T 11-21 ms late; its P onset is right
#   (0 +- 2 ms);
# so onsets (P, QRS) come from prominence, the QRS end from dwt (the QRS then reads within +-10 ms from 80 to
# 140 ms wide: a width-dependent error would hide a bundle branch block; with ST elevation dwt's QRS end runs up
# to ~25 ms into the raised ST segment, which only errs towards "abnormal"), and the T end from the mean of the
# two, whose errors there have opposite signs (QT within about +-10 ms on the standard grid). "peak" and "cwt"
# give no QRS onset or miss P onsets by hundreds of ms, so they are not used.
FIDUCIAL_METHODS: dict[str, tuple[str, ...]] = {
    "P_Onsets": ("prominence",),
    "R_Onsets": ("prominence",),
    "R_Offsets": ("dwt",),
    "T_Offsets": ("dwt", "prominence"),
}


def _delineate(nk: Any, cleaned: np.ndarray, rpeaks: np.ndarray, rate: float) -> dict[str, float]:
    """Fiducial points relative to the R peak (samples, median over beats) from the delineators chosen in
    FIDUCIAL_METHODS (any other that answered when those did not), plus the share of beats with a P onset and
    the robust spread of the PR interval (for the P-wave decision)."""
    n = len(rpeaks)
    per_method: dict[str, dict[str, np.ndarray]] = {}
    for method in ("dwt", "prominence"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, waves = nk.ecg_delineate(cleaned, rpeaks, sampling_rate=rate, method=method)
        except (ValueError, IndexError, ZeroDivisionError, TypeError, KeyError):
            continue
        per_method[method] = {key: _as_float_array(waves.get(f"ECG_{key}"), n) - rpeaks
                              for key in FIDUCIAL_METHODS}
    out: dict[str, float] = {}
    for key, preferred in FIDUCIAL_METHODS.items():
        medians = {m: _nanmedian(v[key]) for m, v in per_method.items()}
        chosen = [medians[m] for m in preferred if math.isfinite(medians.get(m, math.nan))]
        if not chosen:
            chosen = [v for v in medians.values() if math.isfinite(v)]
        out[key] = float(np.mean(chosen)) if chosen else math.nan
    source = per_method.get("prominence") or per_method.get("dwt")
    out["p_share"], out["pr_sd_ms"] = 0.0, math.inf
    if source is not None:
        pr = source["R_Onsets"] - source["P_Onsets"]
        found = np.isfinite(pr) & (pr > 0)
        out["p_share"] = float(found.mean())
        if found.any():
            spread = 1.4826 * float(np.median(np.abs(pr[found] - np.median(pr[found]))))
            out["pr_sd_ms"] = spread / rate * 1000
    return out


def _lowpass(values: np.ndarray, rate: float) -> np.ndarray:
    from scipy.signal import butter, sosfiltfilt

    sos = butter(2, min(40.0, 0.4 * rate), btype="lowpass", fs=rate, output="sos")
    return sosfiltfilt(sos, values)


def _beat_levels(values: np.ndarray, rpeaks: np.ndarray, rate: float, *, onset: float,
                 offset: float) -> tuple[float, float]:
    """(ST at J+60 ms, net QRS area in mV·s), each beat against its PR baseline, median over beats."""
    n = len(values)
    lo_ms, hi_ms = PR_BASELINE_WINDOW_MS
    baselines: list[float] = []
    for r in rpeaks:
        start = int(round(r + onset - lo_ms / 1000 * rate))
        stop = int(round(r + onset - hi_ms / 1000 * rate)) + 1
        baselines.append(float(np.mean(values[start:stop])) if start >= 0 and stop <= n and stop > start
                         else math.nan)
    sts: list[float] = []
    areas: list[float] = []
    half = max(1, int(round(0.004 * rate)))  # average +-4 ms around J+60 so one noisy sample does not decide
    for k, r in enumerate(rpeaks):
        base = baselines[k]
        if not math.isfinite(base):
            continue
        here = r + onset - (lo_ms + hi_ms) / 2000 * rate
        slope = 0.0
        if k + 1 < len(rpeaks) and math.isfinite(baselines[k + 1]):
            slope = (baselines[k + 1] - base) / (rpeaks[k + 1] - r)
        st_at = int(round(r + offset + ST_OFFSET_MS / 1000 * rate))
        if st_at + half < n:
            level = float(np.mean(values[st_at - half:st_at + half + 1]))
            sts.append(level - (base + slope * (st_at - here)))
        q_on, q_off = int(round(r + onset)), int(round(r + offset))
        if 0 <= q_on < q_off < n:
            seg = values[q_on:q_off + 1] - (base + slope * (np.arange(q_on, q_off + 1) - here))
            areas.append(float(np.sum(seg)) / rate)
    return (float(np.median(sts)) if sts else math.nan, float(np.median(areas)) if areas else math.nan)


def _consensus_beats(nk: Any, cleaned: dict[str, np.ndarray], rate: float) -> np.ndarray:
    """QRS times found by nk.ecg_peaks in at least half the leads (within 60 ms of each other): one lead alone
    mistakes tall T waves for beats when its QRS is small (lead II with a left axis)."""
    found: list[tuple[int, str]] = []
    for name, values in cleaned.items():
        try:
            _, info = nk.ecg_peaks(values, sampling_rate=rate, method="neurokit")
        except (ValueError, IndexError, KeyError):
            continue
        found.extend((int(p), name) for p in info["ECG_R_Peaks"])
    found.sort()
    radius = int(0.06 * rate)
    beats: list[int] = []
    cluster: list[tuple[int, str]] = []
    for item in found + [(10**12, "")]:
        if cluster and item[0] - cluster[0][0] > radius:
            if len({lead for _, lead in cluster}) * 2 >= len(cleaned):
                beats.append(int(np.median([t for t, _ in cluster])))
            cluster = []
        cluster.append(item)
    if not beats:
        return np.asarray(beats, dtype=np.int64)
    # Filter edges at the very start and end of a recording can look like a beat in many leads at once; a
    # real QRS moves all leads fast (spatial velocity), so keep beats whose velocity is at least 40% of the
    # median beat's.
    velocity = np.sum([np.abs(np.diff(values, prepend=values[0])) for values in cleaned.values()], axis=0)
    n = len(velocity)
    peaks = np.array([float(np.max(velocity[max(0, b - radius):min(n, b + radius + 1)])) for b in beats])
    keep = peaks >= QRS_VELOCITY_SHARE * float(np.median(peaks))
    return np.asarray(beats, dtype=np.int64)[keep]


def _r_peaks(values: np.ndarray, beats: np.ndarray, rate: float) -> np.ndarray:
    """The lead's own R peak (its maximum within 60 ms) at each consensus beat."""
    radius = int(0.06 * rate)
    out = []
    for b in beats:
        lo, hi = max(0, b - radius), min(len(values), b + radius + 1)
        out.append(lo + int(np.argmax(values[lo:hi])))
    return np.asarray(out, dtype=np.int64)


QRS_VELOCITY_SHARE = 0.4

# Leads tried for delineation, in order of preference: the delineators expect an upright R wave.
DELINEATION_LEADS = ("II", "V5", "I", "aVF", "V6", "V4")


def _delineation_lead(cleaned: dict[str, np.ndarray], beats: np.ndarray, rate: float) -> str:
    """Lead II unless its R wave is small or smaller than its S: then the candidate with the tallest R."""
    radius = int(0.06 * rate)
    sizes: dict[str, tuple[float, float]] = {}
    for name in DELINEATION_LEADS:
        values = cleaned.get(name)
        if values is None:
            continue
        ups, downs = [], []
        for b in beats:
            window = values[max(0, b - radius):b + radius + 1]
            base = float(np.median(values[max(0, b - 2 * radius):b + 2 * radius + 1]))
            ups.append(float(np.max(window)) - base)
            downs.append(base - float(np.min(window)))
        sizes[name] = (float(np.median(ups)), float(np.median(downs)))
    tallest = max(r for r, _ in sizes.values())
    for name, (r_amp, s_amp) in sizes.items():
        if r_amp >= 0.6 * tallest and r_amp > s_amp:
            return name
    return max(sizes, key=lambda n: sizes[n][0])


def measure(tr: Tracing) -> Measurements:
    """Measure a tracing that passes quality.check; EcgNotMeasurable lists the blocking flags otherwise."""
    flags = check(tr)
    if not is_measurable(flags):
        raise EcgNotMeasurable(flags)
    import neurokit2 as nk  # slow import (about 5 s): only when a tracing is measured

    rate = float(tr.sample_rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cleaned = {name: nk.ecg_clean(values, sampling_rate=rate, method="neurokit")
                   for name, values in tr.leads.items()}
        beats = _consensus_beats(nk, cleaned, rate)
    if len(beats) < 3:
        raise EcgNotMeasurable([], reason_zh=f"仅检出 {len(beats)} 个 QRS 波（至少需要 3 个）",
                               reason_en=f"only {len(beats)} QRS complexes found (3 are needed)")
    used_lead = _delineation_lead(cleaned, beats, rate)
    rpeaks = _r_peaks(cleaned[used_lead], beats, rate)
    rr_s = np.diff(rpeaks) / rate
    rr_mean = float(np.mean(rr_s))
    rhythm_regular = bool(np.std(rr_s) / rr_mean <= IRREGULAR_RR_CV)
    fiducials = _delineate(nk, cleaned[used_lead], rpeaks, rate)
    if not (math.isfinite(fiducials["R_Onsets"]) and math.isfinite(fiducials["R_Offsets"])):
        used_lead = ""
    to_ms = 1000.0 / rate
    onset, offset = fiducials.get("R_Onsets", math.nan), fiducials.get("R_Offsets", math.nan)
    qrs_ms = (offset - onset) * to_ms if used_lead and offset > onset else None
    p_waves = fiducials.get("p_share", 0.0) >= P_PRESENT_SHARE and fiducials.get("pr_sd_ms", math.inf) <= P_STEADY_SD_MS
    pr_ms = None
    if p_waves and math.isfinite(fiducials.get("P_Onsets", math.nan)) and used_lead:
        pr_ms = (onset - fiducials["P_Onsets"]) * to_ms
    t_end = fiducials.get("T_Offsets", math.nan)
    qt_ms = (t_end - onset) * to_ms if used_lead and math.isfinite(t_end) and t_end > offset else None
    qtc_ms = qt_ms / math.sqrt(rr_mean) if qt_ms is not None else None
    st_mv: dict[str, float] = {}
    areas: dict[str, float] = {}
    if qrs_ms is not None:
        for name, values in tr.leads.items():
            st, area = _beat_levels(_lowpass(values, rate), rpeaks, rate, onset=onset, offset=offset)
            if math.isfinite(st):
                st_mv[name] = round(st, 3)
            areas[name] = area
    axis = None
    if math.isfinite(areas.get("I", math.nan)) and math.isfinite(areas.get("aVF", math.nan)):
        # aVF (Goldberger) is sqrt(3)/2 of the vertical component, lead I the whole horizontal one.
        axis = math.degrees(math.atan2(areas["aVF"] * 2 / math.sqrt(3), areas["I"]))
    method = (f"neurokit2 {nk.__version__}: ecg_clean, ecg_peaks agreed by >= half the leads, ecg_delineate "
              f"(onsets prominence, QRS end dwt, T end mean of both) on lead {used_lead or '-'}, medians over "
              f"{len(rpeaks)} beats; ST at J+60 ms and axis against each beat's PR baseline")
    return Measurements(heart_rate_bpm=round(60.0 / rr_mean, 1), rr_ms=round(rr_mean * 1000, 1),
                        pr_ms=_round(pr_ms), qrs_ms=_round(qrs_ms), qt_ms=_round(qt_ms), qtc_ms=_round(qtc_ms),
                        qrs_axis_deg=_round(axis), st_mv=st_mv, rhythm_regular=rhythm_regular, method=method,
                        p_waves=p_waves)


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 1)


def _stemi_territories(st_mv: dict[str, float]) -> list[str]:
    """Territories with ST elevation over the limit in at least two of their leads: codes.TERRITORY_LEADS
    groups the leads that look at one wall, which is what "contiguous" means in the criterion."""
    found: list[str] = []
    for territory, leads in codes.TERRITORY_LEADS.items():
        hits = sum(st_mv.get(lead, 0.0) >= (STEMI_ST_V2_V3_MV if lead in ("V2", "V3") else STEMI_ST_MV)
                   for lead in leads)
        if hits >= 2:
            found.append(territory)
    return found


def suggest_codes(m: Measurements, flags: Iterable[QualityFlag] = (), *, sex: str = "") -> list[str]:
    """Codes from ecg/codes.py for the reader to confirm: one rhythm, conduction, ST-T and conclusion codes.

    `flags` are the quality flags: with blocking ones nothing is suggested (the numbers would be guesses).
    `sex` ("M"/"F") picks the long-QT limit; unknown uses the men's (lower) one."""
    if any(f.blocking for f in flags):
        return []
    rhythm = ("atrial_fibrillation" if not m.rhythm_regular and not m.p_waves else
              "other_rhythm" if not m.p_waves else
              "sinus_tachycardia" if m.heart_rate_bpm > TACHY_BPM else
              "sinus_bradycardia" if m.heart_rate_bpm < BRADY_BPM else "sinus_rhythm")
    out = [rhythm]
    abnormal = rhythm == "other_rhythm"
    wide = m.qrs_ms is not None and m.qrs_ms >= QRS_WIDE_MS  # which bundle branch is the reader's call
    if m.pr_ms is not None and m.pr_ms > PR_LONG_MS:
        out.append("av_block_1")
    elif not wide:
        out.append("normal_conduction")
    abnormal = abnormal or wide or "av_block_1" in out
    territories = _stemi_territories(m.st_mv)
    st_t: list[str] = []
    if territories:
        st_t.append("st_elevation")
    if any(v <= ST_DEPRESSION_MV for v in m.st_mv.values()):
        st_t.append("st_depression")
    qtc_limit = QTC_LONG_WOMEN_MS if sex == "F" else QTC_LONG_MEN_MS
    if m.qtc_ms is not None and m.qtc_ms > qtc_limit:
        st_t.append("long_qt")
    out.extend(st_t or ["normal_st_t"])
    abnormal = abnormal or bool(st_t)
    conclusions = [f"stemi_{t}" for t in territories if f"stemi_{t}" in codes.BY_CODE]
    if rhythm == "atrial_fibrillation":
        conclusions.append("af")
    if not conclusions:
        # A sinus rate just outside 60-100 with nothing else is "大致正常" (borderline), not abnormal.
        conclusions.append("abnormal" if abnormal else
                           "borderline" if rhythm in ("sinus_tachycardia", "sinus_bradycardia") else "normal")
    out.extend(conclusions)
    return [c for c in out if c in codes.BY_CODE]
