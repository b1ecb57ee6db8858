"""Patient matching benchmark: how good and how fast the likely-duplicate warning is.

Residents come from the demo's generator (`healthrelay.demo.residents.synthetic_residents`):
households, clan surnames, a rural age pyramid, and about 1% planted near-duplicates typed
with realistic errors (homophone characters, day and month swapped, birth-date and phone
typos, a missing or changed phone, the ID left out).

Figures printed:
  (a) precision and recall of `find_candidates` at WARNING_THRESHOLD, pair by pair, with
      every resident looked up against all others (as if each were being registered), recall
      per kind of planted error, and how often a resident with no duplicate would still see a
      warning (the nuisance a village doctor meets);
  (b) time per lookup with N residents in SQLite (the real `find_candidates`, indexed
      blocking queries), and with a million residents in memory (`BlockingIndex`, the same
      keys and scorer); `--sqlite-million` also loads the million into SQLite.

    .venv/bin/python bench/matching.py            # 20,000 in SQLite, 1,000,000 in memory
    .venv/bin/python bench/matching.py --smoke    # a tiny version, a few seconds
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HEALTHRELAY_DATA_DIR", tempfile.mkdtemp(prefix="hr-bench-"))

from sqlalchemy import create_engine, insert  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from healthrelay.core.db import utcnow  # noqa: E402
from healthrelay.core.migrate import upgrade  # noqa: E402
from healthrelay.demo.residents import ResidentRecord, synthetic_residents  # noqa: E402
from healthrelay.directory.models import Area, AreaLevel  # noqa: E402
from healthrelay.patients import matching  # noqa: E402
from healthrelay.patients import service as patient_service  # noqa: E402
from healthrelay.patients.models import IdentifierType, Patient, PatientIdentifier  # noqa: E402

Pair = tuple[int, int]


def _pair(a: int, b: int) -> Pair:
    return (a, b) if a < b else (b, a)


def person_of(r: ResidentRecord, area_ids: dict[str, int]) -> matching.Person:
    """The record as matching sees it; ids are record index + 1, as loaded into the database."""
    return matching.Person(id=r.index + 1, name=r.name, pinyin=r.pinyin, initials=r.pinyin_initials, sex=r.sex,
                           birth_date=r.birth_date, phone=r.phone, area_id=area_ids[r.village_code],
                           resident_id=r.resident_id or "", insurance_card=r.insurance_card or "")


def area_ids_for(records: Iterable[ResidentRecord]) -> dict[str, int]:
    return {code: i + 1 for i, code in enumerate(sorted({r.village_code for r in records}))}


# ------------------------------------------------------------------------------------ loading

def load_sqlite(records: Sequence[ResidentRecord], area_ids: dict[str, int], path: Path) -> Session:
    """A fresh, migrated SQLite database holding the residents (bulk insert, like the demo)."""
    url = f"sqlite:///{path}"
    upgrade(url)
    engine = create_engine(url)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(insert(Area.__table__), [
            {"id": area_id, "code": code, "name": code, "level": AreaLevel.VILLAGE, "grids": []}
            for code, area_id in area_ids.items()])
        for start in range(0, len(records), 20000):
            chunk = records[start:start + 20000]
            conn.execute(insert(Patient.__table__), [
                {"id": r.index + 1, "name": r.name, "pinyin": r.pinyin, "pinyin_initials": r.pinyin_initials,
                 "sex": r.sex, "birth_date": r.birth_date, "phone": r.phone, "area_id": area_ids[r.village_code],
                 "grid": r.grid, "address_line": r.address_line, "created_at": now, "updated_at": now}
                for r in chunk])
            idents = []
            for r in chunk:
                if r.resident_id:
                    idents.append({"patient_id": r.index + 1, "type": IdentifierType.RESIDENT_ID,
                                   "value": r.resident_id, "issuer_organisation_id": None})
                if r.insurance_card:
                    idents.append({"patient_id": r.index + 1, "type": IdentifierType.INSURANCE_CARD,
                                   "value": r.insurance_card, "issuer_organisation_id": None})
            if idents:
                conn.execute(insert(PatientIdentifier.__table__), idents)
    return Session(engine)


# --------------------------------------------------------------------------------- evaluating

Finder = Callable[[matching.Person], list[matching.Candidate]]


class Run:
    """Lookups of a set of residents: what was flagged, and how long each lookup took."""

    def __init__(self) -> None:
        self.flagged: set[Pair] = set()
        self.queried: set[int] = set()
        self.warned: set[int] = set()  # queried residents that got at least one warning
        self.seconds: list[float] = []

    def lookup(self, find: Finder, p: matching.Person) -> None:
        assert p.id is not None
        started = time.perf_counter()
        found = find(p)
        self.seconds.append(time.perf_counter() - started)
        self.queried.add(p.id)
        for c in found:
            self.flagged.add(_pair(p.id, c.patient_id))
        if found:
            self.warned.add(p.id)


def quality(run: Run, truth: set[Pair], records: Sequence[ResidentRecord], *,
            all_queried: bool) -> dict[str, object]:
    """Precision over flagged pairs, recall over planted pairs, false-warning rate per resident."""
    in_dup = {i + 1 for pair in truth for i in (pair[0] - 1, pair[1] - 1)}
    true_found = run.flagged & truth
    truth_reachable = {p for p in truth if p[0] in run.queried or p[1] in run.queried}
    clean_queried = run.queried - in_dup
    false_warned = {q for q in clean_queried if q in run.warned}
    by_error: dict[str, list[int]] = {}
    for a, b in truth_reachable:
        dup = records[b - 1] if records[b - 1].is_planted_duplicate else records[a - 1]
        for error in dup.planted_errors:
            by_error.setdefault(error, [0, 0])
            by_error[error][1] += 1
            by_error[error][0] += (a, b) in true_found
    out: dict[str, object] = {
        "recall": len(true_found) / len(truth_reachable) if truth_reachable else float("nan"),
        "planted": len(truth_reachable), "found": len(true_found),
        "false_warning_rate": len(false_warned) / len(clean_queried) if clean_queried else float("nan"),
        "false_warned": len(false_warned), "clean_queried": len(clean_queried),
        "by_error": by_error,
    }
    if all_queried:  # every resident looked up: every flagged pair is known, so precision is exact
        out["precision"] = len(true_found) / len(run.flagged) if run.flagged else float("nan")
        out["flagged"] = len(run.flagged)
    return out


def timing(seconds: Sequence[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"mean_ms": statistics.fmean(ordered) * 1000, "p50_ms": ordered[len(ordered) // 2] * 1000,
            "p95_ms": ordered[int(len(ordered) * 0.95)] * 1000, "max_ms": ordered[-1] * 1000,
            "total_s": sum(ordered), "lookups": len(ordered)}


# ------------------------------------------------------------------------------------- runs

def sqlite_run(records: Sequence[ResidentRecord], pairs: Sequence[Pair], *, sample: int | None,
               rng: random.Random, workdir: Path, label: str) -> dict[str, object]:
    area_ids = area_ids_for(records)
    started = time.perf_counter()
    db = load_sqlite(records, area_ids, workdir / f"{label}.sqlite3")
    load_s = time.perf_counter() - started
    truth = {_pair(a + 1, b + 1) for a, b in pairs}
    people = [person_of(r, area_ids) for r in records]
    queries = people if sample is None else _sample(people, records, truth, sample, rng)

    def find(p: matching.Person) -> list[matching.Candidate]:
        return matching.find_candidates(db, name=p.name, birth_date=p.birth_date, sex=p.sex, phone=p.phone,
                                        area_id=p.area_id, resident_id=p.resident_id,
                                        insurance_card=p.insurance_card, exclude_ids=[p.id or 0])

    run = Run()
    for p in queries:
        run.lookup(find, p)
    searches = search_timings(db, records, rng)
    db.close()
    return {"label": label, "store": "SQLite", "residents": len(records), "load_s": load_s, "search": searches,
            **quality(run, truth, records, all_queried=sample is None), **timing(run.seconds)}


def search_timings(db: Session, records: Sequence[ResidentRecord], rng: random.Random,
                   per_kind: int = 50) -> dict[str, float]:
    """Mean ms of the search box's lookups (the ids step of patients.service.search)."""
    clerk = SimpleNamespace(organisation_id=None)
    picks = rng.sample(list(records), min(per_kind, len(records)))
    kinds = {
        "name": [r.name for r in picks],
        "initials": [r.pinyin_initials for r in picks],
        "resident ID": [r.resident_id for r in picks if r.resident_id],
        "phone tail": [r.phone[-4:] for r in picks if r.phone],
    }
    out = {}
    for kind, queries in kinds.items():
        started = time.perf_counter()
        for q in queries:
            patient_service._search_ids(db, user=clerk, q=q, limit=50)  # type: ignore[arg-type]
        out[kind] = (time.perf_counter() - started) / max(1, len(queries)) * 1000
    return out


def memory_run(records: Sequence[ResidentRecord], pairs: Sequence[Pair], *, sample: int | None,
               rng: random.Random, label: str) -> dict[str, object]:
    area_ids = area_ids_for(records)
    truth = {_pair(a + 1, b + 1) for a, b in pairs}
    started = time.perf_counter()
    index = matching.BlockingIndex()
    people = [person_of(r, area_ids) for r in records]
    for p in people:
        index.add(p)
    load_s = time.perf_counter() - started
    queries = people if sample is None else _sample(people, records, truth, sample, rng)
    run = Run()
    for p in queries:
        run.lookup(lambda q: index.find(q, exclude_ids=(q.id,)), p)
    return {"label": label, "store": "memory", "residents": len(records), "load_s": load_s,
            **quality(run, truth, records, all_queried=sample is None), **timing(run.seconds)}


def _sample(people: Sequence[matching.Person], records: Sequence[ResidentRecord], truth: set[Pair], n: int,
            rng: random.Random) -> list[matching.Person]:
    """Every planted duplicate, looked up as its registration would (recall), plus `n` random
    residents that have no duplicate (false warnings)."""
    in_pair = {i for pair in truth for i in pair}
    planted = [p for p, r in zip(people, records, strict=True) if r.is_planted_duplicate]
    others = [p for p in people if p.id not in in_pair]
    return planted + rng.sample(others, min(n, len(others)))


# ----------------------------------------------------------------------------------- output

def print_table(results: Sequence[dict[str, object]]) -> None:
    def pct(v: object) -> str:
        return "-" if v is None else f"{float(v) * 100:5.1f}%"  # type: ignore[arg-type]

    head = (f"{'run':<22}{'store':<8}{'residents':>10}{'load s':>8}{'lookups':>9}{'mean ms':>9}{'p50 ms':>8}"
            f"{'p95 ms':>8}{'total s':>9}{'precision':>10}{'recall':>8}{'false warnings':>17}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['label']:<22}{r['store']:<8}{r['residents']:>10,}{r['load_s']:>8.1f}{r['lookups']:>9,}"
              f"{r['mean_ms']:>9.2f}{r['p50_ms']:>8.2f}{r['p95_ms']:>8.2f}{r['total_s']:>9.1f}"
              f"{pct(r.get('precision')):>10}{pct(r['recall']):>8}"
              f"{float(r['false_warning_rate']) * 100:>8.2f}% ({r['false_warned']}/{r['clean_queried']:,})")
    print()
    print("recall by planted error (a duplicate carries 1-3 errors; found / planted):")
    for r in results:
        by_error = r["by_error"]
        assert isinstance(by_error, dict)
        parts = [f"{name} {found}/{total}" for name, (found, total) in sorted(by_error.items())]
        print(f"  {r['label']} ({r['store']}): " + ", ".join(parts))
    print()
    print("search box, mean ms per query in SQLite (50 random residents per kind):")
    for r in results:
        if "search" in r:
            searches = r["search"]
            assert isinstance(searches, dict)
            print(f"  {r['residents']:>10,} residents: " + ", ".join(f"{k} {v:.2f}" for k, v in searches.items()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds (CI)")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--residents", type=int, default=20_000, help="residents in the SQLite run")
    parser.add_argument("--million", type=int, default=1_000_000, help="residents in the large run")
    parser.add_argument("--sample", type=int, default=20_000,
                        help="large run: random residents looked up besides every planted duplicate")
    parser.add_argument("--sqlite-million", action="store_true", help="also load the large run into SQLite")
    args = parser.parse_args(argv)
    if args.smoke:
        args.residents, args.million, args.sample = 2_000, 20_000, 1_000
    rng = random.Random(args.seed)
    started = time.perf_counter()
    print(f"patient matching benchmark · warning threshold {matching.WARNING_THRESHOLD} · block limit "
          f"{matching.BLOCK_LIMIT} · seed {args.seed}{' · smoke' if args.smoke else ''}")
    print("residents: healthrelay.demo.residents.synthetic_residents (about 1% planted near-duplicates)")
    print()
    results = []
    with tempfile.TemporaryDirectory(prefix="hr-bench-") as tmp:
        workdir = Path(tmp)
        t = time.perf_counter()
        records, pairs = synthetic_residents(args.seed, args.residents)
        print(f"generated {len(records):,} records ({len(pairs)} planted duplicates) in "
              f"{time.perf_counter() - t:.1f}s", flush=True)
        results.append(sqlite_run(records, pairs, sample=None, rng=rng, workdir=workdir,
                                  label=f"all vs all {args.residents // 1000}k"))
        results.append(memory_run(records, pairs, sample=None, rng=rng, label=f"all vs all {args.residents // 1000}k"))
        t = time.perf_counter()
        big, big_pairs = synthetic_residents(args.seed + 1, args.million)
        print(f"generated {len(big):,} records ({len(big_pairs)} planted duplicates) in "
              f"{time.perf_counter() - t:.1f}s", flush=True)
        label = f"sample of {args.million // 1000:,}k"
        results.append(memory_run(big, big_pairs, sample=args.sample, rng=rng, label=label))
        if args.sqlite_million:
            results.append(sqlite_run(big, big_pairs, sample=args.sample, rng=rng, workdir=workdir, label=label))
    print()
    print_table(results)
    print()
    print("precision: flagged pairs that are planted duplicates (only where every resident was looked up);")
    print("recall: planted pairs flagged; false warn: residents without a duplicate who would see a warning.")
    print(f"total {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
