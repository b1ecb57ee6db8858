"""Synthetic 12-lead ECGs whose true intervals, axis and ST levels are known exactly.

Used by the tests, the demo, the accuracy bench and the browser test. Why not neurokit2's
`ecg_simulate(method="multileads")` alone: it integrates the ECGSYN model once per lead and then rescales
every lead on its own to span -0.4..1.2 mV, so the leads lose their relations (III = II - I no longer holds,
the isoelectric line sits at a different level in each lead) and the axis, the ST level and the wave
boundaries have no defined true value. Here each beat is built in time from compactly supported waves
(a P, a Q-R-S complex and a T, each exactly zero outside its window), so PR, QRS and QT are known to the
sample; limb leads are projections of one frontal-plane heart vector (Einthoven and Goldberger relations hold
exactly), so the QRS axis is known; and ST shifts are added between each J point and T end. `neurokit_12_lead`
wraps neurokit2's own simulator for the one thing it does define, the heart rate, as a second check.

Wave shapes: P and T are raised-cosine bumps (smooth onset and end, like real P and T waves); the Q, R and S
deflections are half-sine lobes, which start with a visible corner as a real QRS does. The QT shortens with
rate by Bazett (QT = QTc x sqrt(RR)), so the true QTc (Bazett) is the `qtc_ms` asked for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from healthrelay.ecg.formats import LEADS, Demographics, Tracing, _sha256

# ST shifts (mV) of an acute inferior STEMI with reciprocal depression in I/aVL; limb leads obey Einthoven
# (III = II - I) and Goldberger (aVF = II - I/2, aVL = I - II/2, aVR = -(I + II)/2).
INFERIOR_STEMI: dict[str, float] = {
    "I": -0.05, "II": 0.25, "III": 0.30, "aVR": -0.10, "aVL": -0.175, "aVF": 0.275,
    "V1": 0.0, "V2": -0.05, "V3": -0.05, "V4": 0.0, "V5": 0.0, "V6": 0.0,
}
# Acute anterior STEMI: elevation V1-V4 (over 0.2 mV in V2-V3 as the criterion asks), slight inferior depression.
ANTERIOR_STEMI: dict[str, float] = {
    "I": 0.05, "II": 0.0, "III": -0.05, "aVR": -0.025, "aVL": 0.05, "aVF": -0.025,
    "V1": 0.15, "V2": 0.35, "V3": 0.40, "V4": 0.30, "V5": 0.05, "V6": 0.0,
}

# Frontal-plane wave vectors: (amplitude mV, angle degrees relative to the QRS axis for Q/R/S, absolute for P/T).
_P_FRONTAL = (0.18, 55.0)
_T_FRONTAL = (0.40, 45.0)
_Q_FRONTAL = (0.12, 170.0)   # initial septal forces point away from the main axis
_R_FRONTAL = (1.30, 0.0)
_S_FRONTAL = (0.30, 200.0)
# Chest leads (mV): P, Q, R, S, T; the usual R-wave progression from rS in V1 to qR in V6.
_PRECORDIAL: dict[str, tuple[float, float, float, float, float]] = {
    "V1": (0.06, 0.0, 0.25, -1.00, 0.10),
    "V2": (0.08, 0.0, 0.45, -1.30, 0.45),
    "V3": (0.10, 0.0, 0.85, -0.80, 0.50),
    "V4": (0.10, -0.05, 1.30, -0.50, 0.45),
    "V5": (0.10, -0.10, 1.40, -0.25, 0.35),
    "V6": (0.09, -0.08, 1.10, -0.15, 0.28),
}
# Where Q, R and S sit inside the QRS window (fractions of its duration): Q from onset, S ends at the J point.
_Q_SPAN = (0.0, 0.28)
_R_SPAN = (0.18, 0.72)
_S_SPAN = (0.62, 1.0)
P_DURATION_MS = 100.0  # at most; never more than 60% of the PR interval, so a PR segment remains
T_SHARE = 0.6  # the T wave takes this share of the J-to-T-end interval; the rest is the flat ST segment


@dataclass
class Truth:
    """What the simulated ECG really is: interval means over the beats fully inside the recording."""

    heart_rate_bpm: float
    rr_ms: float
    pr_ms: float | None
    qrs_ms: float
    qt_ms: float
    qtc_ms: float  # Bazett, from the mean QT and mean RR
    qrs_axis_deg: float
    st_mv: dict[str, float] = field(default_factory=dict)
    rhythm: str = "sinus"
    qrs_onsets_s: list[float] = field(default_factory=list)  # every beat's true QRS onset, seconds from start


def _frontal_leads(amplitude: float, angle_deg: float) -> dict[str, float]:
    """Project a frontal vector on the six limb leads (Einthoven I/II/III, Goldberger aVR/aVL/aVF)."""
    x = amplitude * math.cos(math.radians(angle_deg))
    y = amplitude * math.sin(math.radians(angle_deg))
    lead_i = x
    lead_ii = x * 0.5 + y * math.sqrt(3) / 2
    return {"I": lead_i, "II": lead_ii, "III": lead_ii - lead_i, "aVR": -(lead_i + lead_ii) / 2,
            "aVL": lead_i - lead_ii / 2, "aVF": lead_ii - lead_i / 2}


def _amplitudes(axis_deg: float) -> dict[str, tuple[float, float, float, float, float]]:
    p = _frontal_leads(*_P_FRONTAL)
    t = _frontal_leads(*_T_FRONTAL)
    q = _frontal_leads(_Q_FRONTAL[0], axis_deg + _Q_FRONTAL[1])
    r = _frontal_leads(_R_FRONTAL[0], axis_deg + _R_FRONTAL[1])
    s = _frontal_leads(_S_FRONTAL[0], axis_deg + _S_FRONTAL[1])
    out = {lead: (p[lead], q[lead], r[lead], s[lead], t[lead]) for lead in p}
    out.update(_PRECORDIAL)
    return out


def _true_axis(axis_deg: float) -> float:
    """Angle of the net QRS area vector: each half-sine lobe's area is 2/pi x amplitude x width."""
    total_x = total_y = 0.0
    for (amp, rel), span in ((_Q_FRONTAL, _Q_SPAN), (_R_FRONTAL, _R_SPAN), (_S_FRONTAL, _S_SPAN)):
        area = amp * (span[1] - span[0]) * 2 / math.pi
        total_x += area * math.cos(math.radians(axis_deg + rel))
        total_y += area * math.sin(math.radians(axis_deg + rel))
    angle = math.degrees(math.atan2(total_y, total_x))
    return (angle + 180) % 360 - 180


def _raised_cosine(t: np.ndarray, start: float, end: float) -> np.ndarray:
    inside = (t >= start) & (t <= end)
    out = np.zeros_like(t)
    out[inside] = np.sin(np.pi * (t[inside] - start) / (end - start)) ** 2
    return out


def _half_sine(t: np.ndarray, start: float, end: float) -> np.ndarray:
    inside = (t >= start) & (t <= end)
    out = np.zeros_like(t)
    out[inside] = np.sin(np.pi * (t[inside] - start) / (end - start))
    return out


def _t_wave(t: np.ndarray, start: float, end: float) -> np.ndarray:
    """Asymmetric T: slow rise to its peak at 60% of the wave, faster fall, zero slope at both ends."""
    peak = start + 0.6 * (end - start)
    out = np.zeros_like(t)
    rise = (t >= start) & (t < peak)
    fall = (t >= peak) & (t <= end)
    out[rise] = 0.5 * (1 - np.cos(np.pi * (t[rise] - start) / (peak - start)))
    out[fall] = 0.5 * (1 + np.cos(np.pi * (t[fall] - peak) / (end - peak)))
    return out


ST_RAMP_S = 0.03
ST_RISE_PER_S = 0.5  # the elevated segment keeps rising slowly into the T wave (upsloping, as in acute injury)


def _st_window(t: np.ndarray, j_point: float, t_start: float, t_end: float) -> np.ndarray:
    """0 before J, smooth rise to 1 within 30 ms, then a gentle upslope to T onset, smooth fall to 0 at T end.
    Its value at J+60 ms is exactly 1 (the level the measurement reads)."""
    out = np.zeros_like(t)
    ramp = (t >= j_point) & (t < j_point + ST_RAMP_S)
    x = (t[ramp] - j_point) / ST_RAMP_S
    out[ramp] = x * x * (3 - 2 * x)
    reading = j_point + 0.06

    flat = (t >= j_point + ST_RAMP_S) & (t < t_start)
    out[flat] = 1.0 + ST_RISE_PER_S * (t[flat] - reading)
    out[ramp] *= 1.0 + ST_RISE_PER_S * (j_point + ST_RAMP_S - reading)
    top = 1.0 + ST_RISE_PER_S * (t_start - reading)
    fall = (t >= t_start) & (t <= t_end)
    out[fall] = top * 0.5 * (1 + np.cos(np.pi * (t[fall] - t_start) / (t_end - t_start)))
    return out


def synthetic_with_truth(*, heart_rate: float = 72, duration_s: float = 10, sample_rate: int = 500, seed: int = 0,
                         st_elevation_mv: Mapping[str, float] | None = None, noise_mv: float = 0.0,
                         demographics: Demographics | None = None, acquired_at: datetime | None = None,
                         pr_ms: float = 160.0, qrs_ms: float = 90.0, qtc_ms: float = 410.0, axis_deg: float = 60.0,
                         rhythm: str = "sinus") -> tuple[Tracing, Truth]:
    """Simulate and return the tracing with its truth. `rhythm` is "sinus" (2% respiratory RR variation) or
    "af" (irregularly irregular RR, no P waves, small fibrillatory waves).

    noise_mv=0 gives mathematically clean leads whose silent stretches are exactly zero: under about 45/min
    that stretch passes quality's 1 s flat-run limit. For tracings meant to look recorded, add 0.01 mV."""
    if rhythm not in ("sinus", "af"):
        raise ValueError(f"unknown rhythm {rhythm!r}")
    rng = np.random.default_rng(seed)
    n = int(round(duration_s * sample_rate))
    t = np.arange(n) / sample_rate
    rr_mean = 60.0 / heart_rate
    # Beat onsets (QRS onsets); the recording starts at a random point of a beat, as a real one does.
    onsets: list[float] = []
    rrs: list[float] = []
    phase = rng.uniform(0, 2 * np.pi)
    moment = -rng.uniform(0, rr_mean)
    while moment < duration_s + rr_mean:
        onsets.append(moment)
        if rhythm == "af":
            rr = rr_mean * rng.uniform(0.65, 1.35)
        else:
            rr = rr_mean * (1 + 0.02 * math.sin(phase + 2 * math.pi * 0.25 * moment))
        rrs.append(rr)
        moment += rr
    amplitudes = _amplitudes(axis_deg)
    shifts = {lead: float((st_elevation_mv or {}).get(lead, 0.0)) for lead in LEADS}
    leads = {lead: np.zeros(n) for lead in LEADS}
    qts: list[float] = []
    inside: list[int] = []
    st_at_reading: list[float] = []  # the ST window's value at J+60 ms in each beat (1 unless T starts before)
    for k, onset in enumerate(onsets):
        rr = rrs[k - 1] if k else rrs[0]
        qt = qtc_ms / 1000 * math.sqrt(rr)
        qrs = qrs_ms / 1000
        j_point = onset + qrs
        t_end = onset + qt
        t_start = t_end - T_SHARE * (qt - qrs)
        p_start = onset - pr_ms / 1000
        lo = max(0, int((p_start - 0.05) * sample_rate))
        hi = min(n, int((t_end + 0.05) * sample_rate) + 1)
        if lo >= hi:
            continue
        tt = t[lo:hi]
        p_end = p_start + min(P_DURATION_MS, 0.6 * pr_ms) / 1000
        p_wave = _raised_cosine(tt, p_start, p_end) if rhythm == "sinus" else 0 * tt
        q_wave = _half_sine(tt, onset + _Q_SPAN[0] * qrs, onset + _Q_SPAN[1] * qrs)
        r_wave = _half_sine(tt, onset + _R_SPAN[0] * qrs, onset + _R_SPAN[1] * qrs)
        s_wave = _half_sine(tt, onset + _S_SPAN[0] * qrs, onset + _S_SPAN[1] * qrs)
        t_wave = _t_wave(tt, t_start, t_end)
        st = _st_window(tt, j_point, t_start, t_end)
        st_at_reading.append(float(_st_window(np.array([j_point + 0.06]), j_point, t_start, t_end)[0]))
        for lead in LEADS:
            pa, qa, ra, sa, ta = amplitudes[lead]
            # Each lobe's signed amplitude is its vector's projection (limb leads) or the table value (chest).
            leads[lead][lo:hi] += (pa * p_wave + qa * q_wave + ra * r_wave + sa * s_wave + ta * t_wave
                                   + shifts[lead] * st)
        if p_start >= 0 and t_end <= duration_s and k + 1 < len(onsets) and onsets[k + 1] < duration_s:
            inside.append(k)
            qts.append(qt)
    if rhythm == "af":
        f_waves = 0.05 * np.sin(2 * np.pi * 6.0 * t + rng.uniform(0, 2 * np.pi))
        for lead, weight in (("II", 1.0), ("III", 1.0), ("aVF", 1.0), ("V1", 1.5), ("V2", 0.8)):
            leads[lead] += weight * f_waves
    if noise_mv > 0:
        wander = 2 * noise_mv * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 2 * np.pi))
        mains = 0.5 * noise_mv * np.sin(2 * np.pi * 50.0 * t + rng.uniform(0, 2 * np.pi))
        for lead in LEADS:
            leads[lead] += rng.normal(0, noise_mv, n) + wander + mains
    in_record = [o for o in onsets if 0 <= o < duration_s]
    intervals = list(np.diff(in_record))
    rr_true = float(np.mean(intervals)) if intervals else rr_mean
    qt_true = float(np.mean(qts)) if qts else qtc_ms / 1000 * math.sqrt(rr_mean)
    truth = Truth(heart_rate_bpm=60.0 / rr_true, rr_ms=rr_true * 1000,
                  pr_ms=pr_ms if rhythm == "sinus" else None, qrs_ms=qrs_ms, qt_ms=qt_true * 1000,
                  qtc_ms=qt_true * 1000 / math.sqrt(rr_true), qrs_axis_deg=_true_axis(axis_deg),
                  st_mv={lead: shift * float(np.median(st_at_reading)) for lead, shift in shifts.items()},
                  rhythm=rhythm, qrs_onsets_s=in_record)
    matrix = np.column_stack([leads[lead] for lead in LEADS])
    tracing = Tracing(leads=leads, sample_rate=float(sample_rate), source_format="synthetic",
                      demographics=demographics or Demographics(), acquired_at=acquired_at,
                      device="HealthRelay synthetic ECG", uid=_sha256(matrix.tobytes()))
    return tracing, truth


def p_wave_clear_of_t(*, heart_rate: float, pr_ms: float = 160.0, qtc_ms: float = 410.0) -> bool:
    """Whether the next P wave starts at least 40 ms after the T wave ends (no "P on T"): at fast rates with a
    long PR and QT they merge, and then no delineator can separate them; the accuracy grid keeps them apart."""
    rr = 60.0 / heart_rate
    qt = qtc_ms / 1000 * math.sqrt(rr * 0.98)
    return qt + pr_ms / 1000 + 0.04 <= rr * 0.98


def synthetic_12_lead(*, heart_rate: float = 72, duration_s: float = 10, sample_rate: int = 500, seed: int = 0,
                      st_elevation_mv: Mapping[str, float] | None = None, noise_mv: float = 0.0,
                      demographics: Demographics | None = None, acquired_at: datetime | None = None,
                      **shape: float | str) -> Tracing:
    """A 12-lead tracing; `shape` passes pr_ms, qrs_ms, qtc_ms, axis_deg, rhythm on to synthetic_with_truth."""
    tracing, _ = synthetic_with_truth(heart_rate=heart_rate, duration_s=duration_s, sample_rate=sample_rate,
                                      seed=seed, st_elevation_mv=st_elevation_mv, noise_mv=noise_mv,
                                      demographics=demographics, acquired_at=acquired_at, **shape)  # type: ignore[arg-type]
    return tracing


def truth(**kwargs: object) -> Truth:
    """The true values of `synthetic_12_lead(**kwargs)` (same arguments, same seed)."""
    return synthetic_with_truth(**kwargs)[1]  # type: ignore[arg-type]


def neurokit_12_lead(*, heart_rate: float = 72, duration_s: float = 10, sample_rate: int = 500,
                     seed: int = 0) -> Tracing:
    """neurokit2's own 12-lead simulator (ECGSYN, heart-rate SD 1 bpm, no added noise), as a Tracing.

    Only its heart rate has a defined true value (the asked rate, within its own variability): it rescales each
    lead separately, so intervals, axis and ST level are not comparable with anything."""
    import neurokit2 as nk  # slow import: only when asked

    frame = nk.ecg_simulate(duration=duration_s, sampling_rate=sample_rate, heart_rate=heart_rate,
                            method="multileads", random_state=seed, noise=0)
    leads = {lead: frame[lead].to_numpy(dtype=np.float64) for lead in LEADS}
    matrix = np.column_stack([leads[lead] for lead in LEADS])
    return Tracing(leads=leads, sample_rate=float(sample_rate), source_format="synthetic",
                   device="neurokit2 ecg_simulate multileads", uid=_sha256(matrix.tobytes()))
