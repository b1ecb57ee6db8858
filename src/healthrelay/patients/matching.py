"""Likely-duplicate detection for the master patient index.

Two steps, as record-linkage systems do:

1. **Blocking**: only residents sharing a cheap, indexed key with the query are looked at —
   the same resident ID or insurance card, the same name sound (full pinyin, so homophone
   characters meet), the same birth date (or with day and month swapped), the same phone, or
   the same pinyin initials born in the same year. Every key is one indexed lookup capped at
   BLOCK_LIMIT rows, so a query costs about the same with 20,000 or 1,000,000 residents.
2. **Scoring**: each candidate gets points for what agrees (name or its pinyin, birth date,
   sex, phone, village), fewer points for near-agreement that typing errors produce, and
   penalties for what contradicts (another valid resident ID, the other sex). The result is
   0-100 with the reasons, so a person sees *why* two records look alike.

`score` and `BlockingIndex` are pure and in memory (the benchmark uses them for a million
residents); `find_candidates` runs the same keys as SQL against the database.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache

from pypinyin import lazy_pinyin
from rapidfuzz import fuzz
from sqlalchemy import ColumnElement, CompoundSelect, Select, and_, bindparam, func, select, union
from sqlalchemy.orm import Session

from healthrelay.patients.models import IdentifierType, Patient, PatientIdentifier

WARNING_THRESHOLD = 65
"""Score at which registration stops and shows the candidates.

65 needs more than a shared name: the same name (or name sound), sex and village still need
a birth date that is the same, swapped or one slip away, or a matching phone. Measured on the
demo generator's residents (`bench/matching.py`), every planted duplicate is reached by the
blocking keys; 70 (the same name, birth date and sex) missed the homophone typed with a birth
date slip in the same village, and 65 picks those up while no pair of different people scored
65-69 in the sample. Lower, and namesakes of one village born weeks apart (60) would interrupt
village doctors; the benchmark prints precision, recall and the false-warning rate.
"""

REVIEW_THRESHOLD = 50
"""Lower bar for the admin's duplicates page, where looking at a few extra pairs is cheap."""

# Points for each kind of agreement; the maximum adds up to 100.
NAME_SAME = 35
NAME_SAME_PINYIN = 30  # 同音字: 王秀英 / 王秀瑛 sound the same and are easily written either way
NAME_SIMILAR = 20
NAME_PARTLY_SIMILAR = 8
BIRTH_SAME = 30
BIRTH_DAY_MONTH_SWAPPED = 25  # nearly as telling as the same date: few pairs of dates swap
BIRTH_TYPO = 20  # one digit or two neighbours wrong, a day off, the year off by 1 or 10
BIRTH_NEAR = 10  # within about a month and a half: the lunar birthday given instead of the solar one
BIRTH_NEAR_DAYS = 45
SEX_SAME = 5
SEX_DIFFERENT = -10
PHONE_SAME = 20
PHONE_ONE_DIGIT_OFF = 12
VILLAGE_SAME = 10
# Two different valid resident IDs almost always mean two people (the check digit catches
# single-digit slips), so this outweighs everything else but a shared insurance card.
RESIDENT_ID_DIFFERENT = -40
INSURANCE_CARD_SAME_FLOOR = 95

SIMILAR_NAME_RATIO = 88
PARTLY_SIMILAR_NAME_RATIO = 75

# Upper bound on rows one blocking key may bring back: a safety valve against a degenerate
# key (a placeholder phone such as 13800000000 typed for hundreds of residents).
BLOCK_LIMIT = 500

_NON_DIGITS = re.compile(r"\D")


@dataclass(frozen=True, slots=True)
class Person:
    """What matching looks at; `pinyin` is space-separated syllables ("wang xiu ying")."""

    id: int | None
    name: str
    pinyin: str
    initials: str
    sex: str
    birth_date: date | None
    phone: str = ""
    area_id: int | None = None
    resident_id: str = ""
    insurance_card: str = ""


@dataclass(frozen=True, slots=True)
class Candidate:
    patient_id: int
    score: int
    reasons: tuple[str, ...] = field(default_factory=tuple)


def pinyin_of(name: str) -> tuple[str, str]:
    """("wang xiu ying", "wxy") for 王秀英; letters in non-Chinese names are kept, lower-cased."""
    syllables: list[str] = []
    for token in lazy_pinyin(name or ""):
        syllables.extend(part for part in re.split(r"[^0-9a-zA-Z]+", token.lower()) if part)
    return " ".join(syllables)[:200], "".join(s[0] for s in syllables)[:20]


def make_person(*, id: int | None = None, name: str, sex: str, birth_date: date | None, phone: str = "",
                area_id: int | None = None, resident_id: str = "", insurance_card: str = "",
                pinyin: str | None = None, initials: str | None = None) -> Person:
    if pinyin is None or initials is None:
        pinyin, initials = pinyin_of(name)
    return Person(id=id, name=name, pinyin=pinyin, initials=initials, sex=str(sex), birth_date=birth_date,
                  phone=phone or "", area_id=area_id, resident_id=resident_id or "",
                  insurance_card=insurance_card or "")


def swapped_day_month(d: date) -> date | None:
    """12 March typed as 3 December; None when the swap is no valid, different date."""
    if d.day == d.month or d.day > 12:
        return None
    try:
        return d.replace(month=d.day, day=d.month)
    except ValueError:
        return None


def _one_slip_apart(a: str, b: str) -> bool:
    """Equal length and either one character differs or two neighbours are swapped."""
    if len(a) != len(b) or a == b:
        return False
    diffs = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    if len(diffs) == 1:
        return True
    return len(diffs) == 2 and diffs[1] == diffs[0] + 1 and a[diffs[0]] == b[diffs[1]] and a[diffs[1]] == b[diffs[0]]


def _birth_date_typo(a: date, b: date) -> bool:
    """Dates a slip of the hand turns into each other (see BIRTH_TYPO)."""
    if abs((a - b).days) == 1:
        return True
    if (a.month, a.day) == (b.month, b.day) and abs(a.year - b.year) in (1, 10):
        return True
    return _one_slip_apart(a.strftime("%Y%m%d"), b.strftime("%Y%m%d"))


def score(query: Person, other: Person) -> tuple[int, tuple[str, ...]]:
    """0-100 and the reasons, best evidence first. Pure: no database, no state."""
    if query.resident_id and query.resident_id == other.resident_id:
        return 100, ("same_resident_id",)
    points = 0
    reasons: list[str] = []

    if query.name and query.name == other.name:
        points += NAME_SAME
        reasons.append("same_name")
    elif query.pinyin and query.pinyin == other.pinyin:
        points += NAME_SAME_PINYIN
        reasons.append("same_pinyin")
    elif query.pinyin and other.pinyin:
        ratio = fuzz.ratio(query.pinyin, other.pinyin)
        if ratio >= SIMILAR_NAME_RATIO:
            points += NAME_SIMILAR
            reasons.append("similar_name")
        elif ratio >= PARTLY_SIMILAR_NAME_RATIO:
            points += NAME_PARTLY_SIMILAR
            reasons.append("partly_similar_name")

    if query.birth_date and other.birth_date:
        if query.birth_date == other.birth_date:
            points += BIRTH_SAME
            reasons.append("same_birth_date")
        elif swapped_day_month(query.birth_date) == other.birth_date:
            points += BIRTH_DAY_MONTH_SWAPPED
            reasons.append("birth_day_month_swapped")
        elif _birth_date_typo(query.birth_date, other.birth_date):
            points += BIRTH_TYPO
            reasons.append("birth_date_typo")
        elif abs((query.birth_date - other.birth_date).days) <= BIRTH_NEAR_DAYS:
            points += BIRTH_NEAR
            reasons.append("birth_date_near")

    if query.sex in ("M", "F") and other.sex in ("M", "F"):
        if query.sex == other.sex:
            points += SEX_SAME
            reasons.append("same_sex")
        else:
            points += SEX_DIFFERENT
            reasons.append("different_sex")

    if query.phone and other.phone:
        if query.phone == other.phone:
            points += PHONE_SAME
            reasons.append("same_phone")
        elif _one_slip_apart(query.phone, other.phone):
            points += PHONE_ONE_DIGIT_OFF
            reasons.append("phone_one_digit_off")

    if query.area_id is not None and query.area_id == other.area_id:
        points += VILLAGE_SAME
        reasons.append("same_village")

    if query.resident_id and other.resident_id:
        points += RESIDENT_ID_DIFFERENT
        reasons.append("different_resident_id")

    if query.insurance_card and query.insurance_card == other.insurance_card:
        points = max(points, INSURANCE_CARD_SAME_FLOOR)
        reasons.insert(0, "same_insurance_card")

    return max(0, min(100, points)), tuple(reasons)


# ---------------------------------------------------------------------------------------------
# Blocking keys, shared by the in-memory index and the SQL queries so both find the same pairs.

def index_keys(p: Person) -> list[tuple[str, object]]:
    """The keys a stored resident is filed under."""
    keys: list[tuple[str, object]] = []
    if p.resident_id:
        keys.append(("rid", p.resident_id))
    if p.insurance_card:
        keys.append(("ins", p.insurance_card))
    if p.pinyin:
        keys.append(("py", p.pinyin))
    if p.birth_date:
        keys.append(("bd", p.birth_date))
        if p.initials:
            keys.append(("iy", (p.initials, p.birth_date.year)))
    if p.phone:
        keys.append(("ph", p.phone))
    return keys


def query_keys(p: Person) -> list[tuple[str, object]]:
    """The keys looked up for a query: its own, plus its birth date with day and month swapped."""
    keys = index_keys(p)
    if p.birth_date and (swapped := swapped_day_month(p.birth_date)):
        keys.append(("bd", swapped))
    return keys


def rank(query: Person, others: Iterable[Person], *, min_score: int, limit: int,
         exclude_ids: Iterable[int] = ()) -> list[Candidate]:
    excluded = set(exclude_ids)
    found = []
    for other in others:
        if other.id is None or other.id in excluded:
            continue
        value, reasons = score(query, other)
        if value >= min_score:
            found.append(Candidate(patient_id=other.id, score=value, reasons=reasons))
    found.sort(key=lambda c: (-c.score, c.patient_id))
    return found[:limit]


class BlockingIndex:
    """In-memory blocking over many residents (benchmarks, batch de-duplication)."""

    def __init__(self) -> None:
        self.people: dict[int, Person] = {}
        self._blocks: dict[tuple[str, object], list[int]] = defaultdict(list)

    def add(self, person: Person) -> None:
        if person.id is None:
            raise ValueError("indexed people need an id")
        self.people[person.id] = person
        for key in index_keys(person):
            self._blocks[key].append(person.id)

    def candidate_ids(self, query: Person) -> set[int]:
        ids: set[int] = set()
        for key in query_keys(query):
            ids.update(self._blocks.get(key, ())[:BLOCK_LIMIT])
        return ids

    def find(self, query: Person, *, min_score: int = WARNING_THRESHOLD, limit: int = 10,
             exclude_ids: Iterable[int] = ()) -> list[Candidate]:
        return rank(query, (self.people[i] for i in self.candidate_ids(query)), min_score=min_score,
                    limit=limit, exclude_ids=exclude_ids)


# ---------------------------------------------------------------------------------------------
# The same, against the database.

def live_only() -> ColumnElement[bool]:
    """Not merged away. Written so no planner picks the merged_into_id index for it: without
    statistics SQLite takes `IS NULL` for a selective key and walks every live resident."""
    return func.coalesce(Patient.merged_into_id, 0) == 0


def _block_statement(kind: str, name: str) -> Select[tuple[int]]:
    """One indexed lookup for a kind of key, values as bind parameters named after `name`."""
    live = live_only()
    if kind in ("rid", "ins"):
        ident_type = IdentifierType.RESIDENT_ID if kind == "rid" else IdentifierType.INSURANCE_CARD
        stmt = select(PatientIdentifier.patient_id).where(PatientIdentifier.value == bindparam(name),
                                                          PatientIdentifier.type == ident_type)
    elif kind == "py":
        stmt = select(Patient.id).where(Patient.pinyin == bindparam(name), live)
    elif kind == "bd":
        stmt = select(Patient.id).where(Patient.birth_date == bindparam(name), live)
    elif kind == "ph":
        stmt = select(Patient.id).where(Patient.phone == bindparam(name), live)
    elif kind == "iy":
        stmt = select(Patient.id).where(Patient.pinyin_initials == bindparam(name),
                                        Patient.birth_date >= bindparam(f"{name}_from"),
                                        Patient.birth_date <= bindparam(f"{name}_to"), live)
    else:
        raise ValueError(kind)
    return stmt.limit(BLOCK_LIMIT)


def _block_params(kind: str, value: object, name: str) -> dict[str, object]:
    if kind == "iy":
        initials, year = value  # type: ignore[misc]
        return {name: initials, f"{name}_from": date(year, 1, 1), f"{name}_to": date(year, 12, 31)}
    return {name: value}


@lru_cache(maxsize=128)
def _blocks_union(kinds: tuple[str, ...]) -> Select[tuple[int]] | CompoundSelect:
    """Built once per combination of keys, so each lookup only binds values (statement building
    costs more than the indexed queries themselves). Each block keeps its LIMIT in a subquery."""
    blocks = [_block_statement(kind, f"k{i}") for i, kind in enumerate(kinds)]
    if len(blocks) == 1:
        return blocks[0]
    return union(*(select(block.subquery().c[0]) for block in blocks))


def _block_queries(query: Person) -> list[Select[tuple[int]]]:
    """The lookups one query makes, with their values (to inspect their query plans)."""
    return [_block_statement(kind, f"k{i}").params(**_block_params(kind, value, f"k{i}"))
            for i, (kind, value) in enumerate(query_keys(query))]


def candidate_ids(db: Session, query: Person) -> set[int]:
    keys = query_keys(query)
    if not keys:
        return set()
    params: dict[str, object] = {}
    for i, (kind, value) in enumerate(keys):
        params.update(_block_params(kind, value, f"k{i}"))
    return set(db.scalars(_blocks_union(tuple(kind for kind, _ in keys)), params))


_NATIONAL = (IdentifierType.RESIDENT_ID, IdentifierType.INSURANCE_CARD)
_LOAD_PEOPLE = select(
    Patient.id, Patient.name, Patient.pinyin, Patient.pinyin_initials, Patient.sex, Patient.birth_date,
    Patient.phone, Patient.area_id, PatientIdentifier.type, PatientIdentifier.value,
).outerjoin(PatientIdentifier, and_(PatientIdentifier.patient_id == Patient.id, PatientIdentifier.type.in_(_NATIONAL))
            ).where(Patient.id.in_(bindparam("ids", expanding=True)), live_only())


def load_people(db: Session, ids: Iterable[int]) -> list[Person]:
    """Live (not merged) residents with their national identifiers, as matching sees them."""
    wanted = sorted(set(ids))
    people: dict[int, dict[str, object]] = {}
    for start in range(0, len(wanted), 500):
        rows = db.execute(_LOAD_PEOPLE, {"ids": wanted[start:start + 500]})
        for pid, name, pinyin, initials, sex, birth_date, phone, area_id, kind, value in rows:
            fields = people.setdefault(pid, {
                "id": pid, "name": name, "pinyin": pinyin, "initials": initials, "sex": str(sex),
                "birth_date": birth_date, "phone": phone or "", "area_id": area_id})
            if kind == IdentifierType.RESIDENT_ID:
                fields.setdefault("resident_id", value)
            elif kind == IdentifierType.INSURANCE_CARD:
                fields.setdefault("insurance_card", value)
    return [Person(**fields) for fields in people.values()]  # type: ignore[arg-type]


def find_candidates(db: Session, *, name: str, birth_date: date | None, sex: str, phone: str = "",
                    area_id: int | None = None, resident_id: str = "", insurance_card: str = "",
                    exclude_ids: Iterable[int] = (), limit: int = 10,
                    min_score: int = WARNING_THRESHOLD) -> list[Candidate]:
    """Residents who are likely the person described, best first (two indexed statements)."""
    query = make_person(name=name, sex=sex, birth_date=birth_date, phone=_NON_DIGITS.sub("", phone or ""),
                        area_id=area_id, resident_id=resident_id, insurance_card=insurance_card)
    ids = candidate_ids(db, query)
    return rank(query, load_people(db, ids), min_score=min_score, limit=limit, exclude_ids=exclude_ids)


def find_candidates_for(db: Session, patient_id: int, *, limit: int = 10,
                        min_score: int = REVIEW_THRESHOLD) -> list[Candidate]:
    """Likely duplicates of a stored resident (the admin's duplicates page)."""
    people = load_people(db, [patient_id])
    if not people:
        return []
    me = people[0]
    return find_candidates(db, name=me.name, birth_date=me.birth_date, sex=me.sex, phone=me.phone,
                           area_id=me.area_id, resident_id=me.resident_id, insurance_card=me.insurance_card,
                           exclude_ids=[patient_id], limit=limit, min_score=min_score)
