"""The synthetic residents, without a database: what the matching benchmark and the demo rely on."""

from __future__ import annotations

from collections import Counter
from datetime import date

from pypinyin import lazy_pinyin

from healthrelay.demo import county
from healthrelay.demo.residents import REFERENCE_DATE, synthetic_residents
from healthrelay.patients.identity import check_agrees, parse_resident_id


def test_same_seed_same_people_and_pairs_other_seed_other_people() -> None:
    first, pairs = synthetic_residents(7, 3000)
    again, pairs_again = synthetic_residents(7, 3000)
    other, other_pairs = synthetic_residents(8, 3000)
    assert first == again and pairs == pairs_again
    assert [r.name for r in first] != [r.name for r in other]
    assert {r.resident_id for r in first} != {r.resident_id for r in other}
    assert pairs != other_pairs


def test_every_id_is_valid_unique_and_agrees_with_sex_and_birth_date() -> None:
    records, _ = synthetic_residents(11, 5000)
    ids = [r.resident_id for r in records if r.resident_id]
    assert len(ids) > 0.95 * len(records)  # "a valid resident ID for almost all"
    assert len(set(ids)) == len(ids)
    for r in records:
        if r.resident_id:
            check_agrees(parse_resident_id(r.resident_id), sex=r.sex, birth_date=r.birth_date)
    cards = [r.insurance_card for r in records if r.insurance_card]
    assert len(cards) > 0.85 * len(records) and len(set(cards)) == len(cards)


def test_names_pinyin_and_ages_look_like_a_rural_county() -> None:
    records, _ = synthetic_residents(3, 8000)
    for r in records[:2000]:
        assert r.pinyin == " ".join(lazy_pinyin(r.name))
        assert r.pinyin_initials == "".join(s[0] for s in lazy_pinyin(r.name))
    lengths = Counter(len(r.name) for r in records)
    assert lengths[2] + lengths[3] > 0.99 * len(records) and lengths[3] > lengths[2] > 0.05 * len(records)
    surnames = Counter(r.name[0] for r in records)
    assert {s for s, _ in surnames.most_common(4)} & {"王", "李", "张", "刘"}
    ages = [(REFERENCE_DATE - r.birth_date).days // 365 for r in records]
    elderly = sum(a >= 65 for a in ages) / len(ages)
    young_adults = sum(20 <= a < 30 for a in ages) / len(ages)
    assert 0.18 < elderly < 0.35 and young_adults < 0.1  # many elderly, working-age adults gone to the city
    assert all(0 <= a <= 100 for a in ages)
    assert 0.45 < sum(r.sex == "M" for r in records) / len(records) < 0.57
    phones = [r.phone for r in records if r.phone]
    assert len(phones) > 0.9 * len(records) and all(len(p) == 11 and p[0] == "1" for p in phones)
    village_codes = {v.code for v in county.demo_villages()}
    assert all(r.village_code in village_codes and r.address_line for r in records)


def test_about_one_percent_planted_near_duplicates_with_varied_realistic_errors() -> None:
    records, pairs = synthetic_residents(5, 20000)
    assert len(records) == 20000 + len(pairs) and len(pairs) == 200
    assert [r.index for r in records] == list(range(len(records)))
    kinds: Counter[str] = Counter()
    dup_positions = sorted(b for _, b in pairs)
    assert dup_positions[-1] - dup_positions[0] > len(records) // 2  # spread through, not appended at the end
    for a, b in pairs:
        original, dup = records[a], records[b]
        assert original.person == dup.person and not original.is_planted_duplicate and dup.is_planted_duplicate
        assert original.sex == dup.sex and original.village_code == dup.village_code
        assert dup.resident_id is None  # missing, or mistyped and refused, never stored invalid
        assert (dup.name, dup.birth_date) != (original.name, original.birth_date)
        # the second record was made at another organisation
        assert dup.registered_at[0][0] not in {code for code, _ in original.registered_at}
        if "swapped_day_month" in dup.planted_errors:
            assert (dup.birth_date.month, dup.birth_date.day) == (original.birth_date.day, original.birth_date.month)
        if "homophone" in dup.planted_errors:
            assert len(dup.name) == len(original.name) and dup.pinyin == original.pinyin
        if "phone_typo" in dup.planted_errors:
            assert sum(x != y for x, y in zip(dup.phone, original.phone, strict=True)) in (1, 2)
        kinds.update(dup.planted_errors)
    assert {"homophone", "swapped_day_month", "birth_date_typo", "phone_typo", "id_missing",
            "id_mistyped"} <= set(kinds)
    assert sum(r.is_planted_duplicate for r in records) == len(pairs)


def test_custom_villages_and_sites_are_respected() -> None:
    village = county.VillageSite(code="999999001001", name="试验村", township_name="试验镇", centre_code="T-C",
                                 clinic_code="T-V", grids=("第一网格",), groups=2, weight=1.0)
    records, pairs = synthetic_residents(1, 300, villages=[village], duplicate_share=0.05,
                                         duplicate_sites=["T-H"])
    assert len(pairs) == 15
    assert {r.village_code for r in records} == {"999999001001"}
    assert {records[b].registered_at[0][0] for _, b in pairs} == {"T-H"}
    assert all(r.birth_date < date(2026, 1, 1) for r in records)
