"""Automatic ECG measurement accuracy: `healthrelay.ecg.measure.measure` against synthetic ECGs with known truth.

Cases come from `healthrelay.ecg.synthetic.synthetic_with_truth` (exact PR, QRS, QT, axis and ST by
construction; see its docstring for why not neurokit2's multi-lead simulator alone). Two sets:
  (a) "standard": heart rate 50-120/min, normal PR 160 / QRS 90 / QTc 410, axis -20..90 degrees, noise 0 or
      0.03 mV, 500 Hz: the grid the tests assert tolerances on;
  (b) "varied": rate 45-130, PR 120-260, QRS 70-140, QTc 380-500, axis -30..100, noise 0 / 0.02 / 0.04 mV,
      250 / 500 / 1000 Hz, a third with an inferior and a third with an anterior STEMI. Cases where the next
      P wave would start on the T wave (fast rate with long PR and QT) are skipped: no delineator separates
      them, and a reader would call the PR "not measurable" too.
Also: the heart rate measured on neurokit2's own `ecg_simulate(method="multileads")` against the rate asked
(its only defined truth), and STEMI detection (territory right, no false STEMI).

Figures printed per measurement: mean error (bias), mean absolute error, 95th percentile and maximum of the
absolute error, and seconds per measurement (the first call pays neurokit2's ~5 s import: not counted).

    .venv/bin/python bench/ecg_accuracy.py            # 60 standard + 300 varied cases, 2-3 minutes
    .venv/bin/python bench/ecg_accuracy.py --smoke    # 12 + 20 cases, under a minute
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from healthrelay.ecg import codes  # noqa: E402
from healthrelay.ecg.measure import measure, suggest_codes  # noqa: E402
from healthrelay.ecg.quality import check  # noqa: E402
from healthrelay.ecg.synthetic import (  # noqa: E402
    ANTERIOR_STEMI,
    INFERIOR_STEMI,
    neurokit_12_lead,
    p_wave_clear_of_t,
    synthetic_with_truth,
)

FIELDS = (("heart_rate_bpm", "heart rate", "bpm"), ("rr_ms", "RR", "ms"), ("pr_ms", "PR", "ms"),
          ("qrs_ms", "QRS", "ms"), ("qt_ms", "QT", "ms"), ("qtc_ms", "QTc (Bazett)", "ms"),
          ("qrs_axis_deg", "QRS axis", "deg"), ("st_mv", "ST at J+60 (all leads)", "mV"))


def standard_cases(seeds: int) -> list[dict]:
    axes = (-20, 30, 60, 90)
    return [dict(heart_rate=hr, seed=seed, noise_mv=noise, axis_deg=axes[i % 4])
            for i, (hr, seed, noise) in enumerate(itertools.product((50, 60, 75, 90, 105, 120), range(seeds),
                                                                    (0.0, 0.03)))]


def varied_cases(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    tries = 0
    while len(out) < n:
        tries += 1
        case = dict(heart_rate=float(rng.uniform(45, 130)), seed=int(seed * 10_000 + tries),
                    noise_mv=float(rng.choice([0.0, 0.02, 0.04])), axis_deg=float(rng.uniform(-30, 100)),
                    pr_ms=float(rng.uniform(120, 260)), qrs_ms=float(rng.uniform(70, 140)),
                    qtc_ms=float(rng.uniform(380, 500)), sample_rate=int(rng.choice([250, 500, 1000])),
                    st_elevation_mv=(None, INFERIOR_STEMI, ANTERIOR_STEMI)[len(out) % 3])
        if p_wave_clear_of_t(heart_rate=case["heart_rate"], pr_ms=case["pr_ms"], qtc_ms=case["qtc_ms"]):
            out.append(case)
    return out


def run(cases: list[dict]) -> tuple[dict[str, list[float]], list[float], dict[str, int]]:
    errors: dict[str, list[float]] = {f: [] for f, _, _ in FIELDS}
    seconds: list[float] = []
    stemi = {"cases": 0, "found_right_territory": 0, "normal_cases": 0, "false_stemi": 0, "not_measured": 0}
    for case in cases:
        tr, truth = synthetic_with_truth(**case)
        started = time.perf_counter()
        try:
            m = measure(tr)
        except Exception:  # noqa: BLE001 - a refusal is a result to count, not a crash of the bench
            stemi["not_measured"] += 1
            continue
        seconds.append(time.perf_counter() - started)
        for field, _, _ in FIELDS:
            if field == "st_mv":
                errors[field].extend(m.st_mv[lead] - truth.st_mv[lead] for lead in truth.st_mv if lead in m.st_mv)
                continue
            got, want = getattr(m, field), getattr(truth, field)
            if got is None or want is None:
                continue
            diff = got - want
            if field == "qrs_axis_deg":
                diff = (diff + 180) % 360 - 180
            errors[field].append(diff)
        suggested = suggest_codes(m, check(tr))
        territory = {id(INFERIOR_STEMI): "inferior", id(ANTERIOR_STEMI): "anterior"}.get(
            id(case.get("st_elevation_mv")), "")
        found = [c for c in suggested if codes.is_stemi([c])]
        if territory:
            stemi["cases"] += 1
            stemi["found_right_territory"] += found == [f"stemi_{territory}"]
        else:
            stemi["normal_cases"] += 1
            stemi["false_stemi"] += bool(found)
    return errors, seconds, stemi


def table(title: str, errors: dict[str, list[float]], seconds: list[float]) -> dict[str, dict[str, float]]:
    print(f"\n{title}: {len(seconds)} cases measured, {statistics.median(seconds):.3f} s per measurement "
          f"(median; mean {statistics.mean(seconds):.3f}, max {max(seconds):.3f})")
    print(f"  {'measurement':<26}{'n':>6}{'bias':>9}{'MAE':>9}{'P95 |e|':>10}{'max |e|':>10}  unit")
    summary: dict[str, dict[str, float]] = {}
    for field, label, unit in FIELDS:
        values = np.asarray(errors[field], dtype=np.float64)
        if values.size == 0:
            continue
        absolute = np.abs(values)
        digits = 3 if unit == "mV" else 1
        row = {"n": int(values.size), "bias": round(float(values.mean()), digits),
               "mae": round(float(absolute.mean()), digits), "p95": round(float(np.percentile(absolute, 95)), digits),
               "max": round(float(absolute.max()), digits)}
        summary[field] = row
        print(f"  {label:<26}{row['n']:>6}{row['bias']:>9}{row['mae']:>9}{row['p95']:>10}{row['max']:>10}  {unit}")
    summary["seconds_per_measurement"] = {"median": round(statistics.median(seconds), 3),
                                          "mean": round(statistics.mean(seconds), 3)}
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a small case set, under a minute (CI)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cases", type=int, default=300, help="varied cases")
    args = parser.parse_args(argv)
    seeds, varied = (1, 20) if args.smoke else (5, args.cases)

    started = time.perf_counter()
    measure(synthetic_with_truth(seed=0)[0])  # pay neurokit2's import before timing anything
    print(f"first measurement (imports neurokit2): {time.perf_counter() - started:.1f} s")

    result: dict[str, object] = {}
    errors, seconds, _ = run(standard_cases(seeds))
    result["standard"] = table("(a) standard grid: HR 50-120, normal intervals, noise 0 / 0.03 mV", errors, seconds)
    errors, seconds, stemi = run(varied_cases(varied, args.seed))
    result["varied"] = table("(b) varied: HR 45-130, PR 120-260, QRS 70-140, QTc 380-500, 250-1000 Hz, "
                             "1/3 inferior + 1/3 anterior STEMI", errors, seconds)
    print(f"  STEMI: {stemi['found_right_territory']}/{stemi['cases']} found with the right territory; "
          f"false STEMI in {stemi['false_stemi']}/{stemi['normal_cases']} without; "
          f"{stemi['not_measured']} refused")
    result["stemi"] = stemi

    nk_errors = []
    nk_cases = ((60, 0), (100, 1)) if args.smoke else tuple(itertools.product((50, 70, 90, 110), range(3)))
    for heart_rate, seed in nk_cases:
        m = measure(neurokit_12_lead(heart_rate=heart_rate, seed=seed))
        nk_errors.append(m.heart_rate_bpm - heart_rate)
    worst = max(abs(e) for e in nk_errors)
    print(f"\n(c) neurokit2 ecg_simulate(multileads), heart rate vs the rate asked (its SD is 1 bpm): "
          f"n={len(nk_errors)} bias {statistics.mean(nk_errors):+.2f} bpm, max |e| {worst:.2f} bpm")
    result["neurokit_heart_rate"] = {"n": len(nk_errors), "bias": round(statistics.mean(nk_errors), 2),
                                     "max": round(worst, 2)}
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, default=lambda v: v if not isinstance(v, float) or math.isfinite(v) else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
