"""Which resident of the master patient index a received study belongs to.

A township's modality knows the patient by whatever its desk typed: a resident ID number, the
organisation's own record number, or only a name (in Chinese, or in pinyin when the device cannot
write Chinese), a birth date and a sex. We try the strong identifiers first and fall back to
demographics only when exactly one resident fits confidently. Two plausible residents means a
person decides: the study is flagged, never guessed.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from functools import lru_cache

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.core.errors import InvalidInput
from healthrelay.patients import matching as mpi
from healthrelay.patients.identity import parse_resident_id
from healthrelay.patients.models import IdentifierType, Patient, PatientIdentifier

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LETTERS = re.compile(r"[a-z]+")
_SEPARATORS = re.compile(r"[\s^,.'\-·]+")
_MAX_MERGE_HOPS = 10


@dataclass(frozen=True)
class MatchResult:
    patient_id: int | None
    how: str  # "resident_id", "identifier", "demographics", or "" when unmatched
    note: str


@dataclass(frozen=True)
class DicomPatient:
    """The DICOM patient module, decoded (names already turned into text with the character set)."""

    patient_id: str = ""
    other_ids: tuple[str, ...] = ()
    name: str = ""  # what we match on: Chinese characters when the device sent them, else the pinyin
    birth_date: date | None = None
    sex: str = ""  # "M", "F" or ""


def match_patient(db: Session, *, patient: DicomPatient, organisation_id: int | None) -> MatchResult:
    """Resident ID, then a number the sending organisation issued, then one confident demographic match."""
    notes: list[str] = []
    ids = [i for i in dict.fromkeys((patient.patient_id, *patient.other_ids)) if i]
    resident_id = ""
    for raw in ids:
        try:
            resident_id = parse_resident_id(raw).number
        except InvalidInput:
            continue
        found = _by_identifier(db, value=resident_id, types=(IdentifierType.RESIDENT_ID,), issuer_id=None)
        if found:
            return MatchResult(found, "resident_id", "按身份证号匹配 / matched by resident ID")
        notes.append("身份证号不在主索引中 / resident ID not in the index")
        break
    for raw in ids:
        if organisation_id is not None:
            found = _by_identifier(db, value=raw, types=tuple(IdentifierType), issuer_id=organisation_id)
            if found:
                return MatchResult(found, "identifier", "按本机构病案号匹配 / matched by the sender's record number")
        found = _by_identifier(db, value=raw, types=(IdentifierType.INSURANCE_CARD,), issuer_id=None)
        if found:
            return MatchResult(found, "identifier", "按医保卡号匹配 / matched by insurance card number")
    if not patient.name or patient.birth_date is None:
        notes.append("缺少姓名或出生日期，无法按人口学信息匹配 / no name or birth date to match on")
        return MatchResult(None, "", _note(notes))
    candidates = mpi.find_candidates(db, name=patient.name, birth_date=patient.birth_date, sex=patient.sex,
                                     resident_id=resident_id, limit=5)
    confident = [c for c in candidates if _confident(c)]
    if len(candidates) > 1 and confident:
        notes.append(f"多个候选患者（{len(candidates)}），需人工确认 / several candidates ({len(candidates)}): "
                     "link by hand")
        return MatchResult(None, "", _note(notes))
    if len(confident) == 1:
        survivor = _survivor(db, confident[0].patient_id)
        return MatchResult(survivor, "demographics",
                           "按姓名、出生日期和性别匹配 / matched by name, birth date and sex")
    if candidates:
        notes.append("有相似患者但不够确定，需人工确认 / a similar resident, not certain enough: link by hand")
    else:
        notes.append("主索引中没有符合的患者 / no resident in the index fits")
    return MatchResult(None, "", _note(notes))


def _confident(candidate: mpi.Candidate) -> bool:
    """The same name (or its sound) and the same birth date, and not the other sex."""
    reasons = set(candidate.reasons)
    if "same_resident_id" in reasons or "same_insurance_card" in reasons:
        return True
    return (bool(reasons & {"same_name", "same_pinyin"}) and "same_birth_date" in reasons
            and "different_sex" not in reasons and "different_resident_id" not in reasons)


def _note(notes: list[str]) -> str:
    return "；".join(notes)[:300]


def _by_identifier(db: Session, *, value: str, types: Iterable[IdentifierType], issuer_id: int | None) -> int | None:
    value = value.strip()
    if not value:
        return None
    issuer = (PatientIdentifier.issuer_organisation_id.is_(None) if issuer_id is None
              else PatientIdentifier.issuer_organisation_id == issuer_id)
    found = db.scalar(select(PatientIdentifier.patient_id)
                      .where(PatientIdentifier.value == value, PatientIdentifier.type.in_(list(types)), issuer)
                      .limit(1))
    return _survivor(db, found) if found is not None else None


def _survivor(db: Session, patient_id: int) -> int:
    """A merged-away record stands for the record it was merged into."""
    current = patient_id
    for _ in range(_MAX_MERGE_HOPS):
        merged_into = db.scalar(select(Patient.merged_into_id).where(Patient.id == current))
        if merged_into is None:
            return current
        current = merged_into
    return current


def warm_up() -> None:
    """Load the pinyin tables now (a second or so) rather than while a modality waits for its first answer."""
    _syllables()
    mpi.pinyin_of("王小明")


# --- names -------------------------------------------------------------------------------------

def name_for_matching(alphabetic: str, ideographic: str = "", phonetic: str = "") -> str:
    """Chinese characters when any component group has them, else the pinyin split into syllables.

    DICOM writes family^given; Chinese names have no space between family and given name, while a
    pinyin "XIAOMING" is split into "xiao ming" so it meets the index's "wang xiao ming".
    """
    for group in (ideographic, alphabetic, phonetic):
        if group and _CJK.search(group):
            return "".join(part.strip() for part in group.split("^")[:2])
    text = alphabetic or phonetic
    if not text:
        return ""
    words = [w for w in _SEPARATORS.split(text.lower()) if w]
    syllables: list[str] = []
    for word in words:
        if not _LETTERS.fullmatch(word):
            return " ".join(words)
        split = split_pinyin(word)
        if split is None:
            return " ".join(words)  # not pinyin: keep the name as written
        syllables.extend(split)
    return " ".join(syllables)


@lru_cache(maxsize=1)
def _syllables() -> frozenset[str]:
    """Every toneless pinyin syllable pypinyin knows (ü written v, as the index keeps it).

    Tone marks are stripped with Unicode decomposition: pypinyin's own converters take seconds
    over its 40,000 readings, this takes a few milliseconds.
    """
    from pypinyin.pinyin_dict import pinyin_dict

    readings = {reading for value in pinyin_dict.values() for reading in value.split(",")}
    found: set[str] = set()
    for reading in readings:
        plain = unicodedata.normalize("NFD", reading).replace("u\u0308", "v")
        plain = "".join(c for c in plain if not unicodedata.combining(c))
        if plain.isascii() and plain.isalpha() and re.search("[aeiouv]", plain):
            found.add(plain)
    return frozenset(found)


def split_pinyin(word: str) -> list[str] | None:
    """"xiaoming" → ["xiao", "ming"]: the split into the fewest syllables, or None when it is not pinyin."""
    known = _syllables()
    n = len(word)
    best: list[list[str] | None] = [None] * (n + 1)
    best[0] = []
    for end in range(1, n + 1):
        for start in range(max(0, end - 6), end):
            head = best[start]
            piece = word[start:end]
            if head is not None and piece in known and (best[end] is None or len(head) + 1 < len(best[end] or ())):
                best[end] = [*head, piece]
    return best[n]

