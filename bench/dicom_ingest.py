"""DICOM C-STORE ingest: our receiver beside Orthanc and dcmtk's storescp, on the same files, in one run.

    .venv/bin/python bench/dicom_ingest.py --smoke      # 20 CT slices + 50 small instances (CI)
    .venv/bin/python bench/dicom_ingest.py              # 300-slice 512x512 CT series + 1,000 small instances
    .venv/bin/python bench/dicom_ingest.py --database-url postgresql+psycopg://healthrelay@127.0.0.1:55432/h1_bench
          # adds HealthRelay on PostgreSQL (the database is emptied and migrated: its name must contain
          # "bench" or "test")

Two sets are generated into a temp folder with pydicom: a synthetic 512x512 16-bit CT series (about
0.5 MB per slice) and small 70x70 16-bit instances (about 10 KB each, 50 per study). Each target
gets each set through ONE `storescu` association (env TCP_NODELAY=1):
  - HealthRelay (`healthrelay dicom`, its own process: local file storage with fsync, SQLite by
    default, PostgreSQL with --database-url);
  - Orthanc (Debian) with its default storage and index, fsync on (SyncStorageArea);
  - dcmtk `storescp` writing files (no fsync; the upper bound of what the network and disk allow).
Orthanc and storescp bind every interface, so the script re-executes itself inside `unshare -n` (a
loopback-only network namespace) and runs every server and storescu there, ours too. PostgreSQL is
reached through its Unix socket from inside the namespace. The whole sequence runs --rounds times (3 by
default), each round into fresh archives, and the table shows each target's median run: on a shared
machine single runs of the same target differ by 30% or more. Each run's stored count is checked, so a
fast but lossy run shows up. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
NETNS_FLAG = "HEALTHRELAY_BENCH_IN_NETNS"
SCU_AE = "BENCHSCU"
OUR_AE = "HEALTHRELAY"
SMALL_PER_STUDY = 50


@dataclass
class Result:
    target: str
    dataset: str
    instances: int
    megabytes: float
    seconds: float
    stored: int

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0

    @property
    def mb_per_second(self) -> float:
        return self.megabytes / self.seconds if self.seconds else 0.0


# ------------------------------------------------------------------------------------------ data

def generate(folder: Path, *, ct_slices: int, small: int) -> dict[str, Path]:
    """Write the two sets; returns {set name: folder}."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    rng = np.random.default_rng(4)

    def base(sop_class: str, *, study: str, series: str, rows: int, columns: int, patient: int,
             modality: str) -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = sop_class
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName = f"BENCH^PATIENT{patient:04d}"
        ds.PatientID = f"BENCH{patient:06d}"
        ds.PatientBirthDate, ds.PatientSex = "19600101", "M"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20261123", "101500", f"ACC{patient:06d}"
        ds.Modality, ds.SeriesNumber = modality, 1
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelSpacing = [0.7, 0.7]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        return ds

    def save(ds: Dataset, path: Path, index: int, pixels: np.ndarray) -> None:
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [-180.0, -180.0, float(index) * 1.25]
        ds.SliceLocation = float(index) * 1.25
        ds.PixelData = pixels.astype("<u2").tobytes()
        ds.save_as(path / f"{index:05d}.dcm", enforce_file_format=True)

    sets = {"ct_512": folder / "ct", "small_10kb": folder / "small"}
    for path in sets.values():
        path.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:512, 0:512]
    body = ((yy - 256) ** 2 + (xx - 256) ** 2) < 200 ** 2
    ct = base(CTImageStorage, study=generate_uid(), series=generate_uid(), rows=512, columns=512, patient=1,
              modality="CT")
    for i in range(ct_slices):
        noise = rng.integers(0, 60, size=(512, 512))
        save(ct, sets["ct_512"], i, np.where(body, 1000 + noise, noise))
    study = series = ""
    for i in range(small):
        if i % SMALL_PER_STUDY == 0:
            study, series = generate_uid(), generate_uid()
        ds = base(MRImageStorage, study=study, series=series, rows=70, columns=70, patient=100 + i // SMALL_PER_STUDY,
                  modality="MR")
        save(ds, sets["small_10kb"], i, rng.integers(0, 4000, size=(70, 70)))
    return sets


def folder_size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.iterdir() if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


# ------------------------------------------------------------------------------------ plumbing

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited early with code {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextmanager
def running(cmd: list[str], *, port: int, env: dict[str, str] | None = None, log: Path) -> Iterator[None]:
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, process)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def storescu(*, port: int, called: str, folder: Path) -> float:
    """Send every file of the folder in one association; returns the wall time in seconds."""
    files = sorted(str(p) for p in folder.iterdir() if p.is_file())
    env = {**os.environ, "TCP_NODELAY": "1"}
    started = time.perf_counter()
    result = subprocess.run(["storescu", "-aet", SCU_AE, "-aec", called, "127.0.0.1", str(port), *files],
                            env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"storescu to {called} failed: {result.stderr[-2000:]}")
    return elapsed


# ------------------------------------------------------------------------------------ targets

def run_healthrelay(sets: dict[str, Path], work: Path, *, database_url: str, label: str) -> list[Result]:
    """`healthrelay dicom` in its own process, as the scale-out setup runs it."""
    data_dir = work / f"hr-{label}"
    data_dir.mkdir()
    url = database_url or f"sqlite:///{data_dir / 'healthrelay.sqlite3'}"
    env = {**os.environ, "HEALTHRELAY_DATA_DIR": str(data_dir), "HEALTHRELAY_DATABASE_URL": url,
           "HEALTHRELAY_IMAGING_BACKEND": "local"}
    prepare_database(url, env)
    port = free_port()
    results = []
    cmd = [str(VENV_BIN / "healthrelay"), "dicom", "--host", "127.0.0.1", "--port", str(port)]
    with running(cmd, port=port, env=env, log=work / f"hr-{label}.log"):
        for name, folder in sets.items():
            seconds = storescu(port=port, called=OUR_AE, folder=folder)
            results.append(_result(f"healthrelay-{label}", name, folder, seconds,
                                   stored=lambda f=folder: count_indexed(url, env, f)))
    return results


def prepare_database(url: str, env: dict[str, str]) -> None:
    """Migrate (PostgreSQL: after emptying the bench database) and register the sending modality."""
    script = """
import os, sys
from sqlalchemy import create_engine, text
url = os.environ["HEALTHRELAY_DATABASE_URL"]
if url.startswith("postgresql"):
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
from healthrelay.core.migrate import upgrade
upgrade(url)
import healthrelay.models  # noqa: F401
from healthrelay.core.db import get_sessionmaker
from healthrelay.directory.models import Organisation, OrgKind, OrgLevel
from healthrelay.imaging.models import Modality
db = get_sessionmaker()()
org = Organisation(code="BENCH1", name="基准测试乡镇卫生院", level=OrgLevel.TOWNSHIP, kind=OrgKind.TOWNSHIP_CENTRE,
                   latitude=30.0, longitude=110.0)
db.add(org)
db.flush()
db.add(Modality(ae_title=sys.argv[1], organisation_id=org.id, modality_type="CT", name="bench"))
db.commit()
"""
    subprocess.run([sys.executable, "-c", script, SCU_AE], env=env, check=True, cwd=ROOT)


def count_indexed(url: str, env: dict[str, str], folder: Path) -> int:
    """Instances indexed for the set's studies (read back from the database, as the viewer would)."""
    import pydicom

    studies = sorted({str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID)
                      for p in folder.iterdir() if p.is_file()})
    script = """
import json, os, sys
from sqlalchemy import create_engine, text
engine = create_engine(os.environ["HEALTHRELAY_DATABASE_URL"])
with engine.connect() as conn:
    n = 0
    for uid in json.loads(sys.argv[1]):
        n += conn.execute(text("SELECT count(*) FROM imaging_instances i JOIN imaging_studies s ON s.id = i.study_id "
                               "WHERE s.study_instance_uid = :u"), {"u": uid}).scalar()
print(n)
"""
    out = subprocess.run([sys.executable, "-c", script, json.dumps(studies)], env=env, check=True, cwd=ROOT,
                         capture_output=True, text=True)
    return int(out.stdout.strip())


def run_orthanc(sets: dict[str, Path], work: Path) -> list[Result]:
    storage = work / "orthanc"
    storage.mkdir()
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "bench", "StorageDirectory": str(storage / "storage"), "IndexDirectory": str(storage / "index"),
        "DicomAet": "ORTHANC", "DicomPort": dicom_port, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "SyncStorageArea": True, "StorageCompression": False,
        "DicomCheckCalledAeTitle": False, "Plugins": [], "SaveJobs": False, "HttpServerEnabled": True,
    }
    config_path = work / "orthanc.json"
    config_path.write_text(json.dumps(config))
    results = []
    env = {**os.environ, "TCP_NODELAY": "1"}  # Orthanc talks DICOM through dcmtk, which reads this too
    with running(["Orthanc", str(config_path)], port=dicom_port, env=env, log=work / "orthanc.log"):
        wait_for_port(http_port)
        before = 0
        for name, folder in sets.items():
            seconds = storescu(port=dicom_port, called="ORTHANC", folder=folder)
            total = orthanc_instances(http_port)
            results.append(_result("orthanc", name, folder, seconds, stored=lambda t=total, b=before: t - b))
            before = total
    return results


def orthanc_instances(http_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/statistics", timeout=30) as response:
        return int(json.load(response)["CountInstances"])


def run_storescp(sets: dict[str, Path], work: Path) -> list[Result]:
    results = []
    for name, folder in sets.items():
        out = work / f"storescp-{name}"
        out.mkdir()
        port = free_port()
        env = {**os.environ, "TCP_NODELAY": "1"}
        cmd = ["storescp", "--output-directory", str(out), "-aet", "STORESCP", str(port)]
        with running(cmd, port=port, env=env, log=work / f"storescp-{name}.log"):
            seconds = storescu(port=port, called="STORESCP", folder=folder)
        results.append(_result("storescp", name, folder, seconds,
                               stored=lambda o=out: sum(1 for p in o.iterdir() if p.is_file())))
    return results


def _result(target: str, name: str, folder: Path, seconds: float, *, stored: Callable[[], int]) -> Result:
    count, size = folder_size(folder)
    return Result(target=target, dataset=name, instances=count, megabytes=size / 1e6, seconds=seconds,
                  stored=stored())


# ------------------------------------------------------------------------------------ namespace

def pg_through_socket(url: str) -> str:
    """The same database through its Unix socket: a loopback TCP address is not reachable from the namespace."""
    if not url.startswith("postgresql"):
        return url
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 5432
    if host not in ("127.0.0.1", "localhost", "::1"):
        return url
    for folder in (os.environ.get("HEALTHRELAY_BENCH_PG_SOCKET_DIR", ""), "/tmp/helper-pg", "/var/run/postgresql",
                   "/tmp"):
        if folder and Path(folder, f".s.PGSQL.{port}").exists():
            user = parts.username or ""
            netloc = f"{user}@" if user else ""
            query = parse_qs(parts.query)
            query.update({"host": [folder], "port": [str(port)]})
            return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, doseq=True), ""))
    raise SystemExit(f"cannot reach {host}:{port} from the network namespace: set HEALTHRELAY_BENCH_PG_SOCKET_DIR "
                     "to the server's Unix socket folder")


def reexec_in_namespace(argv: list[str]) -> int:
    """Run this script again inside a loopback-only network namespace; returns its exit code."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        return -1
    env = {**os.environ, NETNS_FLAG: "1"}
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable,
           str(Path(__file__).resolve()), *argv]
    return subprocess.run(cmd, env=env).returncode


# ------------------------------------------------------------------------------------ report

def median_of_rounds(runs: list[Result]) -> list[Result]:
    """Per target and set, the run with the median time: one noisy run on a shared machine does not decide."""
    grouped: dict[tuple[str, str], list[Result]] = {}
    for run in runs:
        grouped.setdefault((run.target, run.dataset), []).append(run)
    return [sorted(group, key=lambda r: r.seconds)[(len(group) - 1) // 2] for group in grouped.values()]


def report(results: list[Result], *, smoke: bool, rounds: int) -> None:
    print(f"\nC-STORE ingest, one storescu association per set (TCP_NODELAY=1), median of {rounds} round(s)"
          f"{' [smoke]' if smoke else ''}")
    header = (f"{'target':24} {'set':12} {'instances':>9} {'MB':>8} {'seconds':>8} {'inst/s':>8} {'MB/s':>7} "
              f"{'stored':>7}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.target:24} {r.dataset:12} {r.instances:9d} {r.megabytes:8.1f} {r.seconds:8.2f} "
              f"{r.per_second:8.1f} {r.mb_per_second:7.1f} {r.stored:7d}")
    for name in dict.fromkeys(r.dataset for r in results):
        orthanc = next((r for r in results if r.dataset == name and r.target == "orthanc"), None)
        if orthanc is None:
            continue
        for r in results:
            if r.dataset == name and r.target.startswith("healthrelay"):
                print(f"{r.target} / orthanc on {name}: {r.per_second / orthanc.per_second:.2f}x")
    print(json.dumps({"benchmark": "dicom_ingest", "smoke": smoke, "rounds": rounds, "results": [
        {**asdict(r), "instances_per_second": round(r.per_second, 1), "mb_per_second": round(r.mb_per_second, 2)}
        for r in results]}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="20 CT slices + 50 small instances")
    parser.add_argument("--ct-slices", type=int, default=None)
    parser.add_argument("--small", type=int, default=None)
    parser.add_argument("--database-url", default="", help="also run HealthRelay on this PostgreSQL database "
                        "(emptied first; its name must contain 'bench' or 'test')")
    parser.add_argument("--targets", default="healthrelay,orthanc,storescp",
                        help="comma-separated: healthrelay, orthanc, storescp")
    parser.add_argument("--rounds", type=int, default=None,
                        help="runs of every target, reported as the median run (default 3; 1 with --smoke)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (files, logs)")
    args = parser.parse_args()
    if args.database_url:
        name = urlsplit(args.database_url).path.lstrip("/")
        if "bench" not in name and "test" not in name:
            raise SystemExit(f"refusing to empty database {name!r}: its name must contain 'bench' or 'test'")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]

    if os.environ.get(NETNS_FLAG) != "1":
        code = reexec_in_namespace(sys.argv[1:])
        if code != -1:
            return code
        print("unshare -n is not permitted here: Orthanc and storescp are skipped (they bind every interface); "
              "measuring HealthRelay alone on loopback", file=sys.stderr)
        targets = [t for t in targets if t == "healthrelay"]

    ct_slices = args.ct_slices if args.ct_slices is not None else (20 if args.smoke else 300)
    small = args.small if args.small is not None else (50 if args.smoke else 1000)
    work = Path(tempfile.mkdtemp(prefix="dicom-ingest-"))
    try:
        started = time.perf_counter()
        sets = generate(work / "files", ct_slices=ct_slices, small=small)
        print(f"generated {ct_slices} CT slices and {small} small instances in {time.perf_counter() - started:.1f} s "
              f"under {work}", file=sys.stderr)
        rounds = args.rounds if args.rounds is not None else (1 if args.smoke else 3)
        runs: list[Result] = []
        for round_number in range(1, rounds + 1):  # each round: every target, in turn, into a fresh archive
            folder = work / f"round-{round_number}"
            folder.mkdir()
            if "healthrelay" in targets:
                runs += run_healthrelay(sets, folder, database_url="", label="sqlite")
                if args.database_url:
                    runs += run_healthrelay(sets, folder, database_url=pg_through_socket(args.database_url),
                                            label="postgresql")
            if "orthanc" in targets and shutil.which("Orthanc"):
                runs += run_orthanc(sets, folder)
            if "storescp" in targets and shutil.which("storescp"):
                runs += run_storescp(sets, folder)
        results = median_of_rounds(runs)
        report(results, smoke=args.smoke, rounds=rounds)
        lost = [r for r in runs if r.stored != r.instances]
        for r in lost:
            print(f"{r.target} stored {r.stored} of {r.instances} {r.dataset} instances", file=sys.stderr)
        return 1 if lost else 0
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
