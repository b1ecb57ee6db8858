"""HL7 v2 ORU^R01 ingest over MLLP: sustained results from one connection and from 8 at once.

    .venv/bin/python bench/hl7_ingest.py --smoke      # 60 messages per run (CI)
    .venv/bin/python bench/hl7_ingest.py              # 2,000 messages over 1 connection, 4,000 over 8
    .venv/bin/python bench/hl7_ingest.py --database-url postgresql+psycopg://healthrelay@127.0.0.1:55432/h_hl7_bench
          # adds PostgreSQL (the database is emptied and migrated: its name must contain "bench" or "test")

Per database: a fresh migrated database (SQLite file in a temp folder; PostgreSQL when given) with one member
hospital, its registered sender (MSH-4) and interface account, and 20 residents registered over the wire with
ADT^A04. Then `healthrelay hl7` runs as its own process on a free loopback port and this script streams
ORU^R01 messages (3 lab results each, Chinese test names, UTF-8), one at a time per connection as MLLP
requires, waiting for each ACK: messages/s over the whole run and the ACK latency (send to ACK received)
p50/p99. Every message must be answered AA and stored once; the script counts the rows afterwards.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
SB, EB = b"\x0b", b"\x1c\r"
FACILITY = "BENCH_LIS"
PATIENTS = 20


@dataclass
class Run:
    database: str
    connections: int
    messages: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    stored: int

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ messages

def resident_id(n: int) -> str:
    from healthrelay.patients.identity import make_resident_id

    return make_resident_id("422822", date(1950 + n % 40, 1 + n % 12, 1 + n % 28), n % 100, "F")


def pid(n: int) -> str:
    born = date(1950 + n % 40, 1 + n % 12, 1 + n % 28)
    family, given = "王李张刘陈杨赵黄周吴"[n % 10], ["秀英", "桂兰", "淑珍", "玉梅", "春花", "海燕", "凤英", "兰英",
                                                      "丽华", "翠花"][(n + n // 10) % 10]
    return f"PID|1||{resident_id(n)}^^^{FACILITY}^NNCHN~BM{n:05d}^^^{FACILITY}^MR||{family}^{given}||{born:%Y%m%d}|F"


def msh(kind: str, control_id: str) -> str:
    return (f"MSH|^~\\&|LIS|{FACILITY}|HEALTHRELAY|HR|{time.strftime('%Y%m%d%H%M%S')}||{kind}|{control_id}|P|2.5"
            "||||||UNICODE UTF-8")


def adt(n: int) -> bytes:
    return "\r".join([msh("ADT^A04^ADT_A01", f"BADT{n:05d}"), f"EVN|A04|{time.strftime('%Y%m%d%H%M%S')}",
                      pid(n), "PV1|1|O"]).encode()


def oru(run: str, i: int) -> bytes:
    now = time.strftime("%Y%m%d%H%M%S")
    segments = [msh("ORU^R01^ORU_R01", f"{run}-{i:06d}"), pid(i % PATIENTS), "PV1|1|O",
                f"OBR|1||{run}-F{i:06d}|CHEM^生化|||{now}|||||||血清||||||||{now}|||F"]
    for k, (code, name, value, unit, ref) in enumerate((
            ("GLU", "葡萄糖", f"{4.5 + (i % 30) / 10:.1f}", "mmol/L", "3.9-6.1"),
            ("K", "钾", f"{3.6 + (i % 10) / 10:.1f}", "mmol/L", "3.5-5.3"),
            ("NA", "钠", f"{136 + i % 8}", "mmol/L", "137-147")), start=1):
        segments.append(f"OBX|{k}|NM|{code}^{name}||{value}|{unit}|{ref}||||F|||{now}")
    return "\r".join(segments).encode()


# ------------------------------------------------------------------------------------------ MLLP client

def exchange(sock: socket.socket, raw: bytes) -> bytes:
    sock.sendall(SB + raw + EB)
    data = b""
    while not data.endswith(EB):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("listener closed the connection")
        data += chunk
    return data[1:-2]


def ack_code(ack: bytes) -> str:
    for segment in ack.split(b"\r"):
        if segment.startswith(b"MSA|"):
            return segment.split(b"|")[1].decode()
    return "?"


def stream(port: int, payloads: list[bytes], latencies: list[float], errors: list[str]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for raw in payloads:
            started = time.perf_counter()
            ack = exchange(sock, raw)
            latencies.append((time.perf_counter() - started) * 1000)
            if ack_code(ack) != "AA":
                errors.append(ack.decode(errors="replace")[:300])


# ------------------------------------------------------------------------------------------ database

def prepare(url: str, data_dir: Path) -> None:
    """Empty (PostgreSQL) and migrate, then the member, its sender and interface account."""
    os.environ["HEALTHRELAY_DATA_DIR"] = str(data_dir)
    os.environ["HEALTHRELAY_DATABASE_URL"] = url
    os.environ["HEALTHRELAY_FAST_PASSWORD_HASH"] = "1"
    from sqlalchemy import create_engine, text

    from healthrelay.core.db import reset_caches

    reset_caches()
    if url.startswith("postgresql"):
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    from healthrelay.core.migrate import upgrade

    upgrade(url)
    import healthrelay.models  # noqa: F401
    from healthrelay.accounts.models import Role
    from healthrelay.accounts.service import create_user
    from healthrelay.core.db import get_sessionmaker
    from healthrelay.directory.models import Organisation, OrgKind, OrgLevel
    from healthrelay.hl7.models import Hl7Sender

    with get_sessionmaker()() as db:
        org = Organisation(code="BENCH1", name="基准测试乡镇卫生院", level=OrgLevel.TOWNSHIP,
                           kind=OrgKind.TOWNSHIP_CENTRE, latitude=30.0, longitude=110.0)
        db.add(org)
        db.flush()
        user = create_user(db, username="bench_lis", password="bench-password-42", display_name="基准 LIS",
                           role=Role.CLINICIAN, organisation_id=org.id)
        db.add(Hl7Sender(facility=FACILITY, organisation_id=org.id, interface_user_id=user.id))
        db.commit()
    reset_caches()


def stored(url: str, run: str) -> int:
    from sqlalchemy import create_engine, func, select

    from healthrelay.hl7.models import Hl7Message

    engine = create_engine(url)
    with engine.connect() as conn:
        n = conn.scalar(select(func.count()).select_from(Hl7Message).where(Hl7Message.control_id.like(f"{run}-%")))
    engine.dispose()
    return int(n or 0)


def start_listener(url: str, port: int, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HEALTHRELAY_DATABASE_URL": url, "HEALTHRELAY_DATA_DIR": str(data_dir),
           "HEALTHRELAY_HL7_PORT": str(port), "HEALTHRELAY_HL7_HOST": "127.0.0.1"}
    proc = subprocess.Popen([sys.executable, "-m", "healthrelay.cli", "hl7"], env=env, cwd=ROOT,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"healthrelay hl7 exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("healthrelay hl7 did not start")


def bench_database(label: str, url: str, data_dir: Path, *, single: int, multi: int, log: Path) -> list[Run]:
    prepare(url, data_dir)
    port = free_port()
    proc = start_listener(url, port, data_dir, log)
    runs: list[Run] = []
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            for n in range(PATIENTS):
                ack = exchange(sock, adt(n))
                if ack_code(ack) != "AA":
                    raise SystemExit(f"registration refused: {ack.decode(errors='replace')}")
        for connections, total in ((1, single), (8, multi)):
            run = f"B{connections}"
            payloads = [oru(run, i) for i in range(total)]
            shares = [payloads[k::connections] for k in range(connections)]
            latencies: list[list[float]] = [[] for _ in range(connections)]
            errors: list[str] = []
            threads = [threading.Thread(target=stream, args=(port, shares[k], latencies[k], errors))
                       for k in range(connections)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - started
            if errors:
                raise SystemExit(f"{len(errors)} messages not accepted, e.g.:\n{errors[0]}")
            all_ms = [x for part in latencies for x in part]
            runs.append(Run(database=label, connections=connections, messages=len(all_ms), seconds=seconds,
                            p50_ms=statistics.median(all_ms), p99_ms=percentile(all_ms, 0.99), max_ms=max(all_ms),
                            stored=stored(url, run)))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return runs


def report(runs: list[Run], *, smoke: bool) -> None:
    print(f"\nHL7 ORU^R01 ingest over MLLP (3 OBX each, UTF-8, ACK awaited per message){' [smoke]' if smoke else ''}")
    print(f"{'database':<12}{'conns':>6}{'messages':>10}{'seconds':>9}{'msg/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'max ms':>9}{'stored':>8}")
    for r in runs:
        print(f"{r.database:<12}{r.connections:>6}{r.messages:>10}{r.seconds:>9.2f}{r.per_second:>9.1f}"
              f"{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.max_ms:>9.2f}{r.stored:>8}")
    print(json.dumps({"benchmark": "hl7_ingest", "smoke": smoke,
                      "results": [{**asdict(r), "per_second": round(r.per_second, 1)} for r in runs]}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="60 messages per run")
    parser.add_argument("--messages", type=int, default=None, help="messages over one connection (default 2000)")
    parser.add_argument("--messages-8", type=int, default=None, help="messages over 8 connections (default 4000)")
    parser.add_argument("--database-url", default="", help="also run on this PostgreSQL database "
                        "(emptied first; its name must contain 'bench' or 'test')")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (database, log)")
    args = parser.parse_args()
    if args.database_url:
        name = urlsplit(args.database_url).path.lstrip("/")
        if "bench" not in name and "test" not in name:
            raise SystemExit(f"refusing to empty database {name!r}: its name must contain 'bench' or 'test'")
    single = args.messages if args.messages is not None else (60 if args.smoke else 2000)
    multi = args.messages_8 if args.messages_8 is not None else (64 if args.smoke else 4000)
    tmp = Path(tempfile.mkdtemp(prefix="hr-hl7-bench-"))
    log = tmp / "listener.log"
    runs: list[Run] = []
    try:
        runs += bench_database("sqlite", f"sqlite:///{tmp / 'bench.sqlite3'}", tmp, single=single, multi=multi,
                               log=log)
        if args.database_url:
            runs += bench_database("postgresql", args.database_url, tmp, single=single, multi=multi, log=log)
        report(runs, smoke=args.smoke)
        lost = [r for r in runs if r.stored != r.messages]
        if lost:
            print(f"stored counts differ from acknowledged messages: {lost}", file=sys.stderr)
            return 1
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
