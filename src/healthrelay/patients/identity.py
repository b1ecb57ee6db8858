"""Resident ID card numbers (居民身份证号, GB 11643-1999): validation and masking."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from healthrelay.core.errors import InvalidInput, field_error

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS = "10X98765432"
_SHAPE = re.compile(r"^\d{17}[\dX]$")


def check_digit(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character for the first 17 digits."""
    total = sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK_CHARS[total % 11]


@dataclass(frozen=True)
class ResidentId:
    number: str
    birth_date: date
    sex: str  # "M" or "F": the 17th digit is odd for men, even for women
    region_code: str


def normalise(raw: str) -> str:
    return (raw or "").strip().replace(" ", "").upper()


def parse_resident_id(raw: str, *, field: str = "resident_id", today: date | None = None) -> ResidentId:
    """Validate length, digits, birth date and check digit; raise InvalidInput naming the problem."""
    number = normalise(raw)

    def bad(reason_zh: str, reason_en: str) -> InvalidInput:
        return InvalidInput(f"身份证号无效：{reason_zh} / invalid resident ID: {reason_en}",
                            field_errors=[field_error(field, reason_en)], code="invalid_resident_id")

    if len(number) != 18:
        raise bad(f"应为 18 位，实际 {len(number)} 位", f"must be 18 characters, got {len(number)}")
    if not _SHAPE.match(number):
        raise bad("前 17 位须为数字，最后一位为数字或 X", "first 17 must be digits, the last a digit or X")
    try:
        born = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        raise bad(f"出生日期 {number[6:14]} 不存在", f"birth date {number[6:14]} does not exist") from None
    if born > (today or date.today()) or born.year < 1880:
        raise bad(f"出生日期 {born.isoformat()} 不合理", f"birth date {born.isoformat()} is implausible")
    expected = check_digit(number[:17])
    if number[17] != expected:
        raise bad("校验位不符（可能输错了某一位）", "check digit does not match (a digit is probably mistyped)")
    return ResidentId(number=number, birth_date=born, sex="M" if int(number[16]) % 2 else "F",
                      region_code=number[:6])


def check_agrees(resident_id: ResidentId, *, sex: str, birth_date: date, field: str = "resident_id") -> None:
    """The ID encodes sex and birth date; a record must agree with its own ID."""
    errors = []
    if resident_id.birth_date != birth_date:
        errors.append(field_error("birth_date", f"ID says {resident_id.birth_date.isoformat()}"))
    if sex in ("M", "F") and resident_id.sex != sex:
        errors.append(field_error("sex", f"ID says {resident_id.sex}"))
    if errors:
        raise InvalidInput("身份证号与性别或出生日期不一致 / resident ID disagrees with sex or birth date",
                           field_errors=[field_error(field, "disagrees with sex or birth date"), *errors],
                           code="resident_id_mismatch")


def make_resident_id(region_code: str, birth_date: date, sequence: int, sex: str) -> str:
    """Build a valid number (demo data and tests): sequence 0-99, sex digit chosen to match."""
    sex_digit = (sequence % 5) * 2 + (1 if sex == "M" else 0)
    first17 = f"{region_code}{birth_date:%Y%m%d}{sequence % 100:02d}{sex_digit}"
    return first17 + check_digit(first17)


def mask_resident_id(number: str) -> str:
    """Keep the region's first 3 and the last 4: 421***********123X. Enough to tell people apart."""
    if not number:
        return ""
    if len(number) < 8:
        return "*" * len(number)
    return number[:3] + "*" * (len(number) - 7) + number[-4:]


def mask_phone(phone: str) -> str:
    return phone[:3] + "****" + phone[-4:] if len(phone) >= 11 else phone
