"""Synthetic county residents with planted near-duplicates: a pure function of the seed, no database.

`synthetic_residents(seed, count)` returns the records the demo stores (in that order) and the pairs of
record indexes that are the same person entered twice. The patient-matching benchmark uses it directly,
also with a million residents, so it is written for speed (one RNG, cached pinyin, no per-row objects
beyond the record itself).

People live in households (shared address line, usually a shared surname, children and many elderly
share a household phone), villages have dominant clan surnames, and the age pyramid is that of a rural
county whose working-age adults left for the cities: many elderly and left-behind children.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta

from healthrelay.demo import county
from healthrelay.demo.county import VillageSite
from healthrelay.demo.names import full_name, homophone, pick_surname, pinyin_of, surname_of
from healthrelay.patients.identity import make_resident_id

# Ages are counted at this fixed date (not today) so a seed gives the same people in any year.
REFERENCE_DATE = date(2026, 1, 1)

# Share of residents per 5-year age band 0-4 ... 95-99 (rural county, working-age adults away).
_AGE_BANDS = (4.5, 5.5, 6.0, 5.0, 3.5, 3.5, 4.5, 5.0, 5.5, 7.5, 8.5, 8.5, 7.5, 7.5, 6.5, 4.5, 3.0, 1.5, 0.5, 0.15)
_AGE_CUM = tuple(sum(_AGE_BANDS[: i + 1]) for i in range(len(_AGE_BANDS)))
_PHONE_PREFIXES = ("130", "131", "132", "133", "134", "135", "136", "137", "138", "139", "150", "151", "152",
                   "153", "155", "156", "157", "158", "159", "166", "177", "180", "181", "182", "183", "185",
                   "186", "187", "188", "189", "191", "198", "199")
DUPLICATE_ERRORS = ("homophone", "swapped_day_month", "birth_date_typo", "phone_typo", "phone_missing",
                    "phone_changed", "id_missing", "id_mistyped", "grid_missing", "address_short")


@dataclass(frozen=True, slots=True)
class ResidentRecord:
    """One patient record as a registration clerk would have typed it."""

    index: int  # position in the returned list (= insertion order in the demo database)
    person: int  # the real person behind the record; planted duplicates share it with their original
    name: str
    pinyin: str  # "wang xiu ying"
    pinyin_initials: str  # "wxy"
    sex: str  # "M" / "F"
    birth_date: date
    phone: str  # "" when none was recorded
    village_code: str  # area code of the village (county.VillageSite.code)
    grid: str  # "" when not recorded
    address_line: str
    resident_id: str | None  # valid GB 11643 number or None
    insurance_card: str | None
    household: int
    # Organisations holding this record: (organisation code, record number issued there or "").
    registered_at: tuple[tuple[str, str], ...]
    # For a planted duplicate: the kinds of error typed into it (see DUPLICATE_ERRORS).
    planted_errors: tuple[str, ...] = ()

    @property
    def is_planted_duplicate(self) -> bool:
        return bool(self.planted_errors)


def synthetic_residents(seed: int, count: int, villages: Sequence[VillageSite] | None = None,
                        duplicate_share: float = 0.01,
                        duplicate_sites: Sequence[str] | None = None,
                        ) -> tuple[list[ResidentRecord], list[tuple[int, int]]]:
    """`count` people (plus about `duplicate_share * count` planted near-duplicate records).

    Returns (records, pairs): records in storage order, `pairs` as (original index, duplicate index)
    with original < duplicate not guaranteed. Same arguments, same output, on any machine.
    `villages` defaults to the demo county's; `duplicate_sites` are the organisation codes where a
    second record gets made (default: the county hospitals, and now and then another township centre).
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    villages = tuple(villages) if villages is not None else county.demo_villages()
    if not villages:
        raise ValueError("at least one village is needed")
    rng = random.Random(f"healthrelay-residents:{seed}")
    generator = _Generator(rng, villages, duplicate_sites)
    n_dups = round(count * duplicate_share) if count else 0
    total = count + n_dups
    # Decide the storage slots first: duplicates sit at random positions, so order gives nothing away.
    dup_slots = sorted(rng.sample(range(total), n_dups)) if n_dups else []
    dup_slot_set = set(dup_slots)
    person_slots = [slot for slot in range(total) if slot not in dup_slot_set]
    people = generator.people(count, person_slots)
    originals = rng.sample(range(count), n_dups) if n_dups else []
    records: list[ResidentRecord | None] = [None] * total
    for person in people:
        records[person.index] = person
    pairs: list[tuple[int, int]] = []
    for slot, original in zip(dup_slots, originals, strict=True):
        records[slot] = generator.near_duplicate(people[original], index=slot)
        pairs.append((people[original].index, slot))
    return records, pairs  # type: ignore[return-value]  # every slot is filled above


class _Generator:
    def __init__(self, rng: random.Random, villages: Sequence[VillageSite],
                 duplicate_sites: Sequence[str] | None) -> None:
        self.rng = rng
        self.villages = villages
        self.duplicate_sites = tuple(duplicate_sites) if duplicate_sites else (
            county.COUNTY_HOSPITAL, county.COUNTY_HOSPITAL, county.COUNTY_HOSPITAL, county.TCM_HOSPITAL,
            county.MCH_HOSPITAL)
        self.centres = sorted({v.centre_code for v in villages})
        self.used_ids: set[str] = set()
        self.record_numbers: dict[str, int] = {}
        # Insurance card numbers: an affine bijection of the person number, so they are unique and unordered.
        self.card_mult = rng.choice((7919, 104729, 1299709, 15485863))
        self.card_offset = rng.randrange(10**9)
        self.clans = {v.code: [pick_surname(rng) for _ in range(rng.choice((1, 2, 3)))] for v in villages}
        weights = [v.weight for v in villages]
        total = sum(weights)
        self.village_cum = []
        acc = 0.0
        for w in weights:
            acc += w / total
            self.village_cum.append(acc)
        self.ages = list(range(len(_AGE_BANDS)))

    # -------------------------------------------------------------------------------- people

    def _age_days(self) -> int:
        band = self.rng.choices(self.ages, cum_weights=_AGE_CUM, k=1)[0]
        return band * 1826 + self.rng.randrange(1826)

    def _phone(self) -> str:
        return self.rng.choice(_PHONE_PREFIXES) + f"{self.rng.randrange(10**8):08d}"

    def _resident_id(self, region: str, born: date, sex: str) -> str:
        seq = self.rng.randrange(100)
        for step in range(100):
            number = make_resident_id(region, born, (seq + step) % 100, sex)
            if number not in self.used_ids:
                self.used_ids.add(number)
                return number
        raise RuntimeError("resident ID space exhausted for one birth date")  # pragma: no cover

    def _record_number(self, org_code: str) -> str:
        n = self.record_numbers.get(org_code, 0) + 1
        self.record_numbers[org_code] = n
        return f"{n:08d}"

    def people(self, count: int, slots: Sequence[int]) -> list[ResidentRecord]:
        rng = self.rng
        out: list[ResidentRecord] = []
        household = 0
        while len(out) < count:
            household += 1
            village = rng.choices(self.villages, cum_weights=self.village_cum, k=1)[0]
            size = min(count - len(out), rng.choices((1, 2, 3, 4, 5, 6), weights=(14, 30, 22, 18, 11, 5), k=1)[0])
            clan = self.clans[village.code]
            family = rng.choice(clan) if rng.random() < 0.55 else pick_surname(rng)
            group = rng.randint(1, village.groups)
            grid = village.grids[(group - 1) * len(village.grids) // village.groups]
            if village.urban:
                address = (f"{county.COUNTY_NAME}{village.township_name}{village.name}"
                           f"{rng.choice(('幸福', '康乐', '锦绣', '滨江', '文昌'))}小区{rng.randint(1, 12)}栋"
                           f"{rng.randint(1, 6)}0{rng.randint(1, 4)}室")
            else:
                address = f"{county.COUNTY_NAME}{village.township_name}{village.name}{group}组{rng.randint(1, 60)}号"
            home_phone = self._phone()
            for member in range(size):
                age_days = self._age_days()
                born = REFERENCE_DATE - timedelta(days=age_days)
                age = age_days // 365
                sex = "M" if rng.random() < 0.51 else "F"
                # Children and most men carry the family surname; wives mostly keep their own.
                if member == 0 or age < 18 or (sex == "M" and rng.random() < 0.8):
                    name = full_name(rng, sex=sex, birth_year=born.year, surname=family)
                else:
                    name = full_name(rng, sex=sex, birth_year=born.year)
                if age < 16:
                    phone = home_phone
                elif age >= 75:
                    phone = home_phone if rng.random() < 0.5 else ("" if rng.random() < 0.3 else self._phone())
                else:
                    phone = home_phone if member == 0 else self._phone()
                region = (county.COUNTY_AREA_CODE if rng.random() < 0.9
                          else rng.choice(county.NEIGHBOUR_REGION_CODES))
                has_id = age_days > 200 and rng.random() < 0.985  # newborns often not yet issued one
                resident_id = self._resident_id(region, born, sex) if has_id else None
                person = len(out)
                card = None
                if rng.random() < 0.93:
                    card = f"Y{county.COUNTY_AREA_CODE}{(person * self.card_mult + self.card_offset) % 10**10:010d}"
                pinyin, initials = pinyin_of(name)
                registered = ((village.centre_code, self._record_number(village.centre_code)),
                              (village.clinic_code, ""))
                out.append(ResidentRecord(
                    index=slots[person], person=person, name=name, pinyin=pinyin, pinyin_initials=initials, sex=sex,
                    birth_date=born, phone=phone, village_code=village.code, grid=grid, address_line=address,
                    resident_id=resident_id, insurance_card=card, household=household, registered_at=registered))
        return out

    # ---------------------------------------------------------------------------- duplicates

    def near_duplicate(self, r: ResidentRecord, *, index: int) -> ResidentRecord:
        """The same person registered again elsewhere, typed with one to three realistic errors."""
        rng = self.rng
        errors: list[str] = []
        name, birth, phone, grid, address = r.name, r.birth_date, r.phone, r.grid, r.address_line
        # Which errors: a name or birth-date error usually, a phone error often, the ID almost always lost.
        if rng.random() < 0.55:
            surname = surname_of(name)
            given = name[len(surname):]
            positions = [i for i, ch in enumerate(given) if homophone(rng, ch)]
            if positions:
                pos = rng.choice(positions)
                alt = homophone(rng, given[pos]) or given[pos]
                name = surname + given[:pos] + alt + given[pos + 1:]
                errors.append("homophone")
        if rng.random() < 0.35 or not errors:
            if birth.day <= 12 and birth.day != birth.month and rng.random() < 0.7:
                birth = date(birth.year, birth.day, birth.month)
                errors.append("swapped_day_month")
            else:
                birth = self._typo_date(birth)
                errors.append("birth_date_typo")
        roll = rng.random()
        if phone and roll < 0.35:
            phone = self._typo_phone(phone)
            errors.append("phone_typo")
        elif phone and roll < 0.5:
            phone = ""
            errors.append("phone_missing")
        elif roll < 0.6:
            phone = self._phone()
            errors.append("phone_changed")
        if r.resident_id:
            # The clerk either skipped the ID or typed it wrong (refused as invalid, so not stored).
            errors.append("id_mistyped" if rng.random() < 0.4 else "id_missing")
        if rng.random() < 0.4:
            grid = ""
            errors.append("grid_missing")
        if rng.random() < 0.3:
            address = address.replace(county.COUNTY_NAME, "", 1)
            address = address[: address.find("村") + 1] if "村" in address else address
            errors.append("address_short")
        site = self._duplicate_site(r)
        pinyin, initials = pinyin_of(name)
        return replace(r, index=index, name=name, pinyin=pinyin, pinyin_initials=initials, birth_date=birth,
                       phone=phone, grid=grid, address_line=address, resident_id=None, insurance_card=None,
                       registered_at=((site, self._record_number(site)),),
                       planted_errors=tuple(errors))

    def _duplicate_site(self, r: ResidentRecord) -> str:
        """Where the second record was made: mostly a county hospital, sometimes another township."""
        rng = self.rng
        others = [c for c in self.centres if c != r.registered_at[0][0]]
        if others and rng.random() < 0.15:
            return rng.choice(others)
        age = (REFERENCE_DATE - r.birth_date).days // 365
        sites = self.duplicate_sites
        if not (age < 14 or (r.sex == "F" and 15 <= age <= 50)):
            # the maternal & child hospital only sees women of child-bearing age and children
            sites = tuple(c for c in sites if c != county.MCH_HOSPITAL) or sites
        return rng.choice(sites)

    def _typo_date(self, born: date) -> date:
        rng = self.rng
        kind = rng.random()
        if kind < 0.4:  # one digit of the year
            candidate = born.replace(year=born.year + rng.choice((-10, 10, -1, 1))) if not (
                born.month == 2 and born.day == 29) else born + timedelta(days=1)
        elif kind < 0.7:  # day mistyped by one
            candidate = born + timedelta(days=rng.choice((-1, 1)))
        else:  # lunar/solar birthday confusion: about a month off
            candidate = born + timedelta(days=rng.choice((-1, 1)) * rng.randint(20, 45))
        return min(candidate, REFERENCE_DATE - timedelta(days=1))

    def _typo_phone(self, phone: str) -> str:
        rng = self.rng
        digits = list(phone)
        if rng.random() < 0.5:  # two neighbours swapped
            i = rng.randrange(3, len(digits) - 1)
            if digits[i] == digits[i + 1]:
                digits[i] = str((int(digits[i]) + 1) % 10)
            else:
                digits[i], digits[i + 1] = digits[i + 1], digits[i]
        else:  # one digit wrong
            i = rng.randrange(3, len(digits))
            digits[i] = str((int(digits[i]) + rng.randint(1, 9)) % 10)
        return "".join(digits)


__all__ = ["DUPLICATE_ERRORS", "REFERENCE_DATE", "ResidentRecord", "synthetic_residents"]
