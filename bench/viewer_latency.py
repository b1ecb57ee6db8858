"""Viewer benchmark: first-image latency and frame scrolling of a 300-slice CT in Debian's chromium.

    .venv/bin/python bench/viewer_latency.py --smoke          # 20 slices, 3 opens each way (CI, ~30 s)
    .venv/bin/python bench/viewer_latency.py                  # 300 slices 512x512, 10 opens each way
    ... --database-url postgresql+psycopg://healthrelay@127.0.0.1:55432/viewer_bench   # on PostgreSQL

Steps: migrate a fresh database in a temp dir (SQLite unless --database-url), create a township with a
CT modality, a doctor and a resident, ingest a synthetic 512x512 16-bit CT series (a chest phantom,
~0.5 MB a slice) through imaging.service.ingest, start `uvicorn healthrelay.asgi:app` on 127.0.0.1,
sign in with Playwright driving /usr/bin/chromium at 1366x768, then measure:
  (a) first image: navigation start -> the first frame painted (Element Timing of the <img> the page's
      HTML carries; viewer.js's own mark as a fallback), and -> the canvas taking over (study JSON
      loaded, interactive). "first" is the very first open after the server started (nothing cached
      anywhere); "cold" opens use a new browser context each time (empty browser cache, server warm);
      "warm" opens reuse one context (the browser cache holds the first frame);
  (b) frame scrolling: ArrowDown pressed again as soon as the frame is drawn ("back to back"), and
      pressed every 80 ms as a held key repeats ("key repeat"): key press -> frame drawn on the canvas;
  (c) the lung window preset: click -> the re-rendered frame drawn.
Prints a table and one JSON line. Timings vary with the machine; compare runs side by side.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("HEALTHRELAY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
USERNAME, PASSWORD = "bench.doctor", "bench-viewer-42"
SIZE, SPACING = 512, 0.7


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------ the synthetic CT

_grid = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) - SIZE / 2


def phantom(k: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """A chest-like slice in stored values (HU + 1024): body, two lungs whose size follows z, a spine."""
    yy, xx = _grid
    z = k / max(1, total - 1)
    hu = np.full((SIZE, SIZE), -1000.0, dtype=np.float32)
    hu[(xx / 230) ** 2 + ((yy - 10) / 170) ** 2 <= 1] = 40
    lung = 0.55 + 0.4 * math.sin(math.pi * z)
    for side in (-1, 1):
        hu[((xx - side * 95) / (75 * lung)) ** 2 + ((yy + 5) / (115 * lung)) ** 2 <= 1] = -820
    hu[(xx / 28) ** 2 + ((yy - 120) / 30) ** 2 <= 1] = 700
    hu[((xx + 20) / 22) ** 2 + ((yy - 40) / 22) ** 2 <= 1] = 180  # contrast in the aorta
    hu += rng.normal(0, 12, size=hu.shape).astype(np.float32)
    return np.clip(hu + 1024, 0, 4095).astype(np.int16)


def ct_slices(count: int, *, patient_id: str) -> Iterator[bytes]:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study_uid, series_uid = generate_uid(), generate_uid()
    rng = np.random.default_rng(7)
    for k in range(count):
        ds = template.copy()
        ds.file_meta = template.file_meta.copy()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.PatientName = patient_id, "BENCH^VIEWER"
        ds.StudyDescription, ds.SeriesDescription, ds.SeriesNumber = "胸部CT平扫 (bench)", "5mm", 2
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.StudyDate = date.today().strftime("%Y%m%d")
        ds.Rows = ds.Columns = SIZE
        ds.PixelSpacing = [SPACING, SPACING]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.InstanceNumber = k + 1
        ds.SliceLocation = -k * 1.0
        ds.ImagePositionPatient = [-SIZE * SPACING / 2, -SIZE * SPACING / 2, -k * 1.0]
        ds.PixelData = phantom(k, count, rng).tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        yield buffer.getvalue()


# ------------------------------------------------------------------------------ database and server

def seed(slices: int) -> str:
    """Migrate, create the township, doctor and resident, ingest the series; returns the study UID."""
    import healthrelay.models  # noqa: F401
    from healthrelay.accounts.service import create_user
    from healthrelay.core.db import get_sessionmaker, reset_caches
    from healthrelay.core.migrate import upgrade
    from healthrelay.directory.models import Organisation, OrgKind, OrgLevel, Practitioner, TitleGrade
    from healthrelay.imaging import service
    from healthrelay.imaging.models import Modality
    from healthrelay.patients.identity import make_resident_id
    from healthrelay.patients.models import IdentifierType, Patient, PatientIdentifier, PatientRegistration, Sex

    reset_caches()
    upgrade(os.environ["HEALTHRELAY_DATABASE_URL"])
    db = get_sessionmaker()()
    try:
        town = Organisation(code="BENCH-TOWN", name="基准镇卫生院", level=OrgLevel.TOWNSHIP,
                            kind=OrgKind.TOWNSHIP_CENTRE)
        db.add(town)
        db.flush()
        modality = Modality(ae_title="BENCHCT", organisation_id=town.id, modality_type="CT", name="bench CT")
        prac = Practitioner(code="BENCH-P1", name="基准医生", title_grade=TitleGrade.ATTENDING,
                            years_independent_practice=5)
        db.add_all([modality, prac])
        db.flush()
        from healthrelay.accounts.models import Role

        create_user(db, username=USERNAME, password=PASSWORD, display_name="基准医生", role=Role.CLINICIAN,
                    organisation_id=town.id, practitioner_id=prac.id)
        patient = Patient(name="王秀英", pinyin="wang xiu ying", pinyin_initials="wxy", sex=Sex.FEMALE,
                          birth_date=date(1956, 3, 8))
        db.add(patient)
        db.flush()
        number = make_resident_id("421122", date(1956, 3, 8), 7, "F")
        db.add_all([PatientIdentifier(patient_id=patient.id, type=IdentifierType.RESIDENT_ID, value=number),
                    PatientRegistration(patient_id=patient.id, organisation_id=town.id)])
        db.commit()
        study_uid = ""
        for data in ct_slices(slices, patient_id=number):
            stored = service.ingest(db, data=data, received_via="dimse", calling_ae_title="BENCHCT",
                                    modality=modality)
            db.commit()
            study_uid = stored.study.study_instance_uid
        return study_uid
    finally:
        db.close()


@contextmanager
def server(env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "healthrelay.asgi:app", "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"], env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


# ------------------------------------------------------------------------------ in the browser

READ_TIMES = """async () => {
  const element = await new Promise((resolve) => {
    try {
      new PerformanceObserver((list) => {
        const e = list.getEntries().find((x) => x.identifier === 'hv-first');
        if (e) { resolve(e.renderTime || e.loadTime); }
      }).observe({type: 'element', buffered: true});
    } catch (err) { resolve(null); }
    setTimeout(() => resolve(null), 1500);
  });
  const nav = performance.getEntriesByType('navigation')[0];
  return {element: element, js: window.hrViewer.firstFrameAt, canvas: window.hrViewer.canvasAt,
          html: nav.responseEnd};
}"""

SCROLL = """async ([count, interval]) => {
  const pane = window.hrViewer.panes[0];
  const original = pane.draw;
  let waiter = null;
  pane.draw = function () {
    original.apply(this, arguments);
    if (waiter && pane.entry && pane.entry.url === pane.wantedUrl) { const w = waiter; waiter = null; w(); }
  };
  const times = [];
  for (let i = 0; i < count; i++) {
    const t0 = performance.now();
    const drawn = new Promise((resolve) => { waiter = resolve; });
    document.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowDown', bubbles: true}));
    await drawn;
    times.push(performance.now() - t0);
    if (interval) { await new Promise((r) => setTimeout(r, Math.max(0, interval - (performance.now() - t0)))); }
  }
  pane.draw = original;
  return times;
}"""

PRESET = """async () => {
  const pane = window.hrViewer.panes[0];
  const t0 = performance.now();
  document.querySelector('.hv-preset[data-preset="lung"]').click();
  await new Promise((resolve) => {
    const check = () => (pane.entry && pane.entry.url.indexOf('window=-600,1500') > 0)
      ? resolve() : setTimeout(check, 2);
    check();
  });
  return performance.now() - t0;
}"""


def open_viewer(page: Any, url: str) -> dict[str, float]:
    page.goto(url, wait_until="commit")
    page.wait_for_function("window.hrViewer && window.hrViewer.firstFrameAt !== null "
                           "&& window.hrViewer.canvasAt !== null", timeout=30_000)
    times = page.evaluate(READ_TIMES)
    # The first image on screen: the HTML's <img> painted, or the canvas if it took over first.
    painted = min(times["element"] or times["js"], times["canvas"])
    return {"first_ms": float(painted), "canvas_ms": float(times["canvas"]), "html_ms": float(times["html"]),
            "element_timing": times["element"] is not None}


def measure(base: str, study_uid: str, *, opens: int, scroll: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    url = f"{base}/imaging/studies/{study_uid}/viewer"
    options = {"base_url": base, "viewport": {"width": 1366, "height": 768}, "locale": "zh-CN"}
    results: dict[str, Any] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        login = browser.new_context(**options)
        page = login.new_page()
        page.goto("/login")
        page.fill("#username", USERNAME)
        page.fill("#password", PASSWORD)
        page.press("#password", "Enter")
        page.wait_for_url(lambda u: "/login" not in u)
        state = login.storage_state()
        login.close()

        def fresh_open() -> dict[str, float]:
            context = browser.new_context(storage_state=state, **options)
            try:
                return open_viewer(context.new_page(), url)
            finally:
                context.close()

        results["first"] = [fresh_open()]
        results["cold"] = [fresh_open() for _ in range(opens)]
        warm = browser.new_context(storage_state=state, **options)
        open_viewer(warm.new_page(), url)
        results["warm"] = []
        for _ in range(opens):
            p = warm.new_page()
            results["warm"].append(open_viewer(p, url))
            p.close()
        p = warm.new_page()
        open_viewer(p, url)
        steps = min(scroll, 10_000)
        results["scroll_fast"] = p.evaluate(SCROLL, [steps, 0])
        p.keyboard.press("Home")
        results["scroll_fast_again"] = p.evaluate(SCROLL, [steps, 0])
        p.keyboard.press("Home")
        p.wait_for_function("window.hrViewer.panes[0].entry.url === window.hrViewer.panes[0].wantedUrl")
        results["preset_ms"] = p.evaluate(PRESET)
        p.keyboard.press("1")
        p.close()
        cold = browser.new_context(storage_state=state, **options)
        p = cold.new_page()
        open_viewer(p, url)
        results["scroll_repeat"] = p.evaluate(SCROLL, [steps, 80])
        cold.close()
        warm.close()
        browser.close()
    return results


# ------------------------------------------------------------------------------ main

def summarise(results: dict[str, Any], slices: int) -> dict[str, Any]:
    def opens(rows: list[dict[str, float]], key: str) -> dict[str, float]:
        values = [r[key] for r in rows]
        return {"p50_ms": round(statistics.median(values), 1), "max_ms": round(max(values), 1), "n": len(values)}

    def frames(values: list[float]) -> dict[str, float]:
        return {"p50_ms": round(percentile(values, 0.5), 1), "p95_ms": round(percentile(values, 0.95), 1),
                "max_ms": round(max(values), 1), "n": len(values)}

    return {
        "slices": slices,
        "first_open": opens(results["first"], "first_ms"),
        "first_open_canvas": opens(results["first"], "canvas_ms"),
        "cold_first_image": opens(results["cold"], "first_ms"),
        "cold_canvas": opens(results["cold"], "canvas_ms"),
        "cold_html": opens(results["cold"], "html_ms"),
        "warm_first_image": opens(results["warm"], "first_ms"),
        "warm_canvas": opens(results["warm"], "canvas_ms"),
        "scroll_back_to_back": frames(results["scroll_fast"]),
        "scroll_back_to_back_cached": frames(results["scroll_fast_again"]),
        "scroll_key_repeat_80ms": frames(results["scroll_repeat"]),
        "lung_preset_ms": round(results["preset_ms"], 1),
        "element_timing": all(r["element_timing"] for r in results["cold"] + results["warm"]),
    }


def print_table(summary: dict[str, Any]) -> None:
    print(f"\nViewer latency, {summary['slices']}-slice 512x512 CT, chromium 1366x768, loopback")
    print(f"{'measure':<44}{'n':>4}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
    labels = [
        ("first_open", "first image, first open after server start"),
        ("first_open_canvas", "canvas ready, first open"),
        ("cold_first_image", "first image, cold browser (new context)"),
        ("cold_canvas", "canvas ready (JSON loaded), cold browser"),
        ("cold_html", "HTML received, cold browser"),
        ("warm_first_image", "first image, warm browser cache"),
        ("warm_canvas", "canvas ready, warm browser cache"),
        ("scroll_back_to_back", "scroll: key -> drawn, back to back"),
        ("scroll_back_to_back_cached", "scroll again over the same frames"),
        ("scroll_key_repeat_80ms", "scroll: key every 80 ms -> drawn"),
    ]
    for key, label in labels:
        row = summary[key]
        p95 = f"{row['p95_ms']:>10.1f}" if "p95_ms" in row else f"{'':>10}"
        print(f"{label:<44}{row['n']:>4}{row['p50_ms']:>10.1f}{p95}{row['max_ms']:>10.1f}")
    print(f"{'lung preset: click -> re-rendered frame drawn':<44}{1:>4}{summary['lung_preset_ms']:>10.1f}")
    if not summary["element_timing"]:
        print("(some opens: the canvas took over before the HTML's <img> was painted; viewer.js's marks used)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="20 slices, 3 opens each way (CI)")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--opens", type=int, default=10)
    parser.add_argument("--scroll", type=int, default=100, help="frames to scroll through")
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (its database is wiped first)")
    parser.add_argument("--keep", action="store_true", help="keep the temp data dir")
    args = parser.parse_args()
    if args.smoke:
        args.slices, args.opens, args.scroll = 20, 3, 15
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing (Debian's chromium package)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="hr-viewer-bench-"))
    try:
        database_url = args.database_url or f"sqlite:///{tmp / 'bench.sqlite3'}"
        if args.database_url:
            from sqlalchemy import create_engine, text

            engine = create_engine(args.database_url)
            with engine.begin() as conn:
                conn.execute(text("DROP SCHEMA public CASCADE"))
                conn.execute(text("CREATE SCHEMA public"))
            engine.dispose()
        env = {**os.environ, "HEALTHRELAY_DATA_DIR": str(tmp), "HEALTHRELAY_DATABASE_URL": database_url,
               "HEALTHRELAY_FAST_PASSWORD_HASH": "1", "HEALTHRELAY_ASSETS_DIR": str(ROOT / "node_modules")}
        env.pop("HEALTHRELAY_RUN_TIMERS", None)
        env.pop("HEALTHRELAY_RUN_DICOM", None)
        os.environ.update({k: env[k] for k in ("HEALTHRELAY_DATA_DIR", "HEALTHRELAY_DATABASE_URL",
                                               "HEALTHRELAY_FAST_PASSWORD_HASH")})
        started = time.perf_counter()
        study_uid = seed(args.slices)
        print(f"ingested {args.slices} slices in {time.perf_counter() - started:.1f} s "
              f"({'PostgreSQL' if args.database_url else 'SQLite'})", flush=True)
        with server(env) as base:
            results = measure(base, study_uid, opens=args.opens, scroll=min(args.scroll, args.slices - 1))
        summary = summarise(results, args.slices)
        print_table(summary)
        print(json.dumps({"bench": "viewer_latency", **summary}, ensure_ascii=False))
        return 0
    finally:
        if args.keep:
            print(f"data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
