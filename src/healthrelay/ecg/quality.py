"""Is this tracing fit to be measured? Flags a person can act on (re-record, fix an electrode), each naming the
lead and the value, so a bad recording is reported instead of silently measured.

Blocking flags stop the automatic measurement (the reader still sees the tracing); the others are shown as
warnings beside the measurements.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from healthrelay.ecg.formats import LEADS, Tracing

# Diagnostic 12-lead ECGs need at least 250 Hz to keep the QRS's high-frequency content (AHA bandwidth
# 0.05-150 Hz); above 2000 Hz no resting ECG device records, so such a rate almost always means a wrong header.
SAMPLE_RATE_MIN_HZ = 250.0
SAMPLE_RATE_MAX_HZ = 2000.0
# A standard resting ECG is 10 s; 8 s still holds enough beats (>= 6 at 50 bpm) for rhythm and median beats.
MIN_DURATION_S = 8.0
# A connected lead shows at least the QRS: its smallest normal amplitude is well over 0.1 mV; under 0.05 mV
# peak-to-peak (0.5-40 Hz band, so hum and drift do not count) the lead is flat: off, broken or not wired.
FLAT_PTP_MV = 0.05
# An electrode that came off for part of the recording: identical samples for this long.
FLAT_RUN_S = 1.0
# The amplifier clipping: the lead stays at exactly its own extreme value for this long (a real R or S peak
# turns within a few milliseconds; a T-wave summit at 1-5 µV resolution stays level for about 10 ms).
SATURATION_RUN_S = 0.016
SATURATION_MIN_SAMPLES = 4
# Larger than any real ECG (the tallest LVH voltages are ~6 mV): the unit is probably wrong (µV read as mV).
AMPLITUDE_MAX_MV = 15.0
# Noise: the robust rms of what lies above 40 Hz (muscle tremor, mains hum), in mV. An absolute level, not a
# ratio to the lead's own amplitude, because small leads (aVL, III) are often small in healthy people. Devices
# are built to about 0.03 mV of noise; over 0.04 mV the onsets and ends move (warning); over 0.15 mV tremor
# hides the P wave and the QRS edges (blocking).
NOISE_WARN_MV = 0.04
NOISE_BLOCK_MV = 0.15
# Baseline drift (below 0.5 Hz) over 2 mV peak-to-peak: breathing or a loose electrode; measurements correct
# for it, so only a warning.
WANDER_PTP_MV = 2.0


@dataclass(frozen=True)
class QualityFlag:
    code: str      # missing_lead, sample_rate, too_short, flat_line, saturated, noisy, unequal_length, ...
    message: str   # zh / en, naming the lead and the value
    lead: str = ""
    blocking: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QualityFlag:
        return cls(code=str(d["code"]), message=str(d["message"]), lead=str(d.get("lead", "")),
                   blocking=bool(d.get("blocking", True)))


def _band(values: np.ndarray, rate: float, low: float | None, high: float | None) -> np.ndarray:
    from scipy.signal import butter, sosfiltfilt

    nyquist = rate / 2
    if high is not None:
        high = min(high, 0.8 * nyquist)
    if low is not None and high is not None:
        sos = butter(2, [low, high], btype="bandpass", fs=rate, output="sos")
    elif low is not None:
        sos = butter(2, low, btype="highpass", fs=rate, output="sos")
    else:
        sos = butter(2, high, btype="lowpass", fs=rate, output="sos")
    if len(values) <= 3 * (2 * len(sos) + 1):
        return values - np.median(values)
    return sosfiltfilt(sos, values)


def _longest_run(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    padded = np.concatenate(([0], mask.astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    return int(np.max(edges[1::2] - edges[::2]))


def _lead_flags(name: str, values: np.ndarray, rate: float) -> list[QualityFlag]:
    flags: list[QualityFlag] = []
    raw_ptp = float(np.ptp(values))
    if raw_ptp > AMPLITUDE_MAX_MV:
        flags.append(QualityFlag(
            "amplitude", f"{name} 导联幅度 {raw_ptp:.1f} mV，超出心电范围（单位可能有误）/ lead {name} spans "
            f"{raw_ptp:.1f} mV, beyond any ECG (wrong unit?)", name))
        return flags
    band = _band(values, rate, 0.5, 40.0)
    ptp = float(np.percentile(band, 99.9) - np.percentile(band, 0.1))
    if ptp < FLAT_PTP_MV:
        flags.append(QualityFlag(
            "flat_line", f"{name} 导联为直线（幅度 {ptp:.2f} mV）/ lead {name} is flat (amplitude {ptp:.2f} mV)",
            name))
        return flags
    same = np.concatenate(([False], np.diff(values) == 0))
    flat_run = _longest_run(same) / rate
    if flat_run >= FLAT_RUN_S:
        flags.append(QualityFlag(
            "flat_line", f"{name} 导联有 {flat_run:.1f} 秒为直线（电极脱落？）/ lead {name} is flat for "
            f"{flat_run:.1f} s (electrode off?)", name))
    for extreme in (float(np.max(values)), float(np.min(values))):
        samples = _longest_run(values == extreme)
        run = samples / rate
        if run >= SATURATION_RUN_S and samples >= SATURATION_MIN_SAMPLES:
            flags.append(QualityFlag(
                "saturated", f"{name} 导联削顶 {run * 1000:.0f} 毫秒（在 {extreme:.2f} mV 处饱和）/ lead {name} is "
                f"clipped for {run * 1000:.0f} ms (saturated at {extreme:.2f} mV)", name))
            break
    if rate > 2 * 45.0:
        high = _band(values, rate, 40.0, None)
        noise = float(1.4826 * np.median(np.abs(high - np.median(high))))  # robust rms, QRS spikes excluded
        snr = ptp / noise if noise > 0 else float("inf")
        if noise > NOISE_WARN_MV:
            blocking = noise > NOISE_BLOCK_MV
            flags.append(QualityFlag(
                "noisy", f"{name} 导联干扰大（信噪比 {snr:.1f}，噪声 {noise:.3f} mV）/ lead {name} is noisy "
                f"(signal-to-noise {snr:.1f}, noise {noise:.3f} mV)", name, blocking))
    wander = _band(values, rate, None, 0.5)
    wander_ptp = float(np.ptp(wander))
    if wander_ptp > WANDER_PTP_MV:
        flags.append(QualityFlag(
            "baseline_wander", f"{name} 导联基线漂移 {wander_ptp:.1f} mV / lead {name} baseline wanders "
            f"{wander_ptp:.1f} mV", name, False))
    return flags


def check(tr: Tracing) -> list[QualityFlag]:
    """Every problem found, recording-wide ones first, then per lead in the standard order."""
    flags: list[QualityFlag] = []
    rate = float(tr.sample_rate or 0)
    if not SAMPLE_RATE_MIN_HZ <= rate <= SAMPLE_RATE_MAX_HZ:
        flags.append(QualityFlag(
            "sample_rate", f"采样率 {rate:g} Hz 不在 {SAMPLE_RATE_MIN_HZ:g}–{SAMPLE_RATE_MAX_HZ:g} Hz 范围内 / "
            f"sample rate {rate:g} Hz is outside {SAMPLE_RATE_MIN_HZ:g}-{SAMPLE_RATE_MAX_HZ:g} Hz"))
    lengths = {name: len(values) for name, values in tr.leads.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k}={n}" for k, n in lengths.items())
        flags.append(QualityFlag("unequal_length", f"各导联长度不一致（{detail}）/ leads differ in length ({detail})"))
    duration = tr.duration_s
    if duration < MIN_DURATION_S:
        flags.append(QualityFlag(
            "too_short", f"记录仅 {duration:.1f} 秒，至少需要 {MIN_DURATION_S:g} 秒 / the recording is "
            f"{duration:.1f} s, at least {MIN_DURATION_S:g} s is needed"))
    missing = [name for name in LEADS if name not in tr.leads]
    for name in missing:
        flags.append(QualityFlag("missing_lead", f"缺少 {name} 导联 / lead {name} is missing", name))
    if rate <= 0:
        return flags
    for name in LEADS:
        values = tr.leads.get(name)
        if values is not None and len(values):
            flags.extend(_lead_flags(name, np.asarray(values, dtype=np.float64), rate))
    return flags


def is_measurable(flags: list[QualityFlag]) -> bool:
    return not any(flag.blocking for flag in flags)
