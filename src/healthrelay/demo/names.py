"""Realistic Chinese personal names for demo people: weighted surnames, given names by birth era and sex,
pinyin with a per-name cache, and homophone (同音字) substitutes for planting near-duplicates.

Everything here is a pure function of a `random.Random`, so a seed always yields the same people.
"""

from __future__ import annotations

import random
from functools import lru_cache

from pypinyin import lazy_pinyin

# Surnames with approximate national shares (per mille). Surnames whose reading depends on context
# (曾, 单, 解, 仇, 区, 查, 覃, 盖 ...) are left out so pinyin from any caller agrees with ours.
SURNAMES: tuple[tuple[str, float], ...] = (
    ("王", 71), ("李", 70), ("张", 67), ("刘", 54), ("陈", 46), ("杨", 31), ("黄", 24), ("赵", 22),
    ("吴", 20), ("周", 19), ("徐", 15), ("孙", 15), ("马", 14), ("朱", 13), ("胡", 13), ("郭", 12),
    ("何", 12), ("林", 10), ("高", 10), ("罗", 10), ("郑", 9), ("梁", 9), ("谢", 8), ("宋", 8),
    ("唐", 8), ("许", 7), ("韩", 7), ("邓", 7), ("冯", 7), ("曹", 7), ("彭", 7), ("肖", 6),
    ("田", 6), ("董", 5), ("潘", 5), ("袁", 5), ("蔡", 5), ("蒋", 5), ("余", 5), ("于", 5),
    ("杜", 5), ("叶", 5), ("程", 4), ("魏", 4), ("苏", 4), ("吕", 4), ("丁", 4), ("任", 4),
    ("卢", 4), ("姚", 4), ("沈", 4), ("钟", 4), ("姜", 4), ("崔", 3), ("谭", 3), ("陆", 3),
    ("范", 3), ("汪", 3), ("廖", 3), ("石", 3), ("金", 3), ("韦", 3), ("贾", 3), ("夏", 3),
    ("付", 3), ("方", 3), ("邹", 2), ("熊", 2), ("白", 2), ("孟", 2), ("秦", 2), ("邱", 2),
    ("侯", 2), ("江", 2), ("尹", 2), ("薛", 2), ("闫", 2), ("段", 2), ("雷", 2), ("龙", 2),
    ("黎", 2), ("史", 2), ("陶", 2), ("贺", 2), ("毛", 2), ("郝", 2), ("顾", 2), ("龚", 2),
    ("邵", 2), ("万", 2), ("武", 2), ("钱", 2), ("戴", 2), ("严", 2), ("莫", 2), ("孔", 2),
    ("向", 2), ("常", 1), ("汤", 1), ("康", 1), ("易", 1), ("乔", 1), ("赖", 1), ("文", 1),
    ("欧阳", 0.5), ("司马", 0.1), ("诸葛", 0.1), ("上官", 0.1),
)
_SURNAME_LIST = [s for s, _ in SURNAMES]
_SURNAME_CUM: list[float] = []
_total = 0.0
for _, _w in SURNAMES:
    _total += _w
    _SURNAME_CUM.append(_total)

# Given-name characters by birth era and sex: (first characters, second characters).
_ERA_CHARS: dict[tuple[int, str], tuple[str, str]] = {
    (0, "M"): ("德福贵富有明华春树成祥永金荣发海山玉文忠志广宝", "福贵明华生林海山发荣金成祥才山明全义和安田财友"),
    (0, "F"): ("秀桂玉凤翠淑春金素彩兰冬月淑香", "英兰珍芳凤梅花莲云琴英兰珍香娥秀荣"),
    (1, "M"): ("建国军卫红志新文立爱振德小永春光", "国华平明伟强勇东新民军林峰斌刚兵海忠波"),
    (1, "F"): ("红秀丽小玉桂春雪海冬晓美", "霞丽敏燕萍玲艳芳娟华英梅琴莉静红"),
    (2, "M"): ("伟俊志晓小宏海建文家永明国", "涛鹏杰磊超浩俊斌亮鑫勇军波宇飞辉龙强明"),
    (2, "F"): ("晓丽小雪佳海思玉春秋美", "婷丹静丽娟敏艳倩雪琳颖晶慧洁佳燕莉芳霞蓉"),
    (3, "M"): ("子浩宇梓俊博睿泽嘉一逸文家思天", "轩涵宇睿泽晨铭航辰熙皓楷锦豪阳博然杰"),
    (3, "F"): ("子欣梓雨诗语可佳思梦若依一晓紫", "涵萱怡琪馨彤悦妍晗涵萱琳瑶雪然汐"),
}
# Girls born since 2000 are sometimes given doubled names (婷婷, 欣欣).
_DOUBLED = "婷欣怡琪萱悦晶佳丹倩"
# Single-character given names, by era.
_SINGLE: dict[int, dict[str, str]] = {
    0: {"M": "福贵明华林山海发荣", "F": "英兰珍芳凤梅花莲"},
    1: {"M": "军伟强勇刚斌兵平华", "F": "红霞丽敏燕萍玲艳芳"},
    2: {"M": "伟涛鹏杰磊超浩俊斌亮", "F": "婷丹静丽娟敏倩雪琳颖"},
    3: {"M": "浩宇轩睿泽晨航辰熙", "F": "欣怡萱琪彤悦妍涵瑶"},
}

# Characters people commonly mistake for one another; homophone groups are computed from this pool plus
# every given-name character above (same toneless pinyin = same group).
_EXTRA_HOMOPHONE_POOL = (
    "瑛莹营兰岚蓝桦化明鸣铭名方芳凤风峰锋枫丰玉钰誉梅玫媒珍贞真琴芹勤霞侠丽莉立力利敏民闽燕艳雁彦宴"
    "萍平苹凭玲林琳灵霖娟涓静晶婧靖敬婷亭庭廷伟威炜卫维涛韬鹏朋杰洁捷磊蕾浩皓昊豪俊骏峻君军均斌彬"
    "亮良梁宇雨语羽飞菲非辉晖慧惠会龙隆强蔷建剑健红宏鸿虹东冬新欣馨心志智芝文雯闻忠中钟刚钢兵冰"
    "生升胜声山珊杉荣容蓉金锦今永勇泳树淑书成诚城承祥翔详秀绣云芸耘梓子紫轩萱宣涵寒韩睿瑞锐晨辰臣"
    "嘉佳家航杭逸怡毅亦熙曦希溪琪琦淇奇思斯丝彤桐童悦越月妍颜研岩依伊怡诗师雪倩颖影英华花莲连廉"
    "琳霖菊桔香湘祥春纯德得福富付贵桂国果平屏全权泉义毅艺和禾安岸友有发法才财材田甜"
)


def era_of(birth_year: int) -> int:
    """0: born before 1950, 1: 1950-1974, 2: 1975-1999, 3: 2000 and later."""
    if birth_year < 1950:
        return 0
    if birth_year < 1975:
        return 1
    if birth_year < 2000:
        return 2
    return 3


def pick_surname(rng: random.Random) -> str:
    return rng.choices(_SURNAME_LIST, cum_weights=_SURNAME_CUM, k=1)[0]


def given_name(rng: random.Random, *, sex: str, birth_year: int) -> str:
    """One or two characters, in the style of the person's birth era."""
    era = era_of(birth_year)
    sex = "F" if sex == "F" else "M"
    single_share = (0.12, 0.2, 0.15, 0.08)[era]
    if rng.random() < single_share:
        return rng.choice(_SINGLE[era][sex])
    if era == 3 and sex == "F" and rng.random() < 0.06:
        c = rng.choice(_DOUBLED)
        return c + c
    first, second = _ERA_CHARS[(era, sex)]
    a = rng.choice(first)
    b = rng.choice(second)
    while b == a:
        b = rng.choice(second)
    return a + b


def full_name(rng: random.Random, *, sex: str, birth_year: int, surname: str | None = None) -> str:
    return (surname or pick_surname(rng)) + given_name(rng, sex=sex, birth_year=birth_year)


@lru_cache(maxsize=100_000)
def _syllables(part: str) -> tuple[str, ...]:
    return tuple(lazy_pinyin(part))


@lru_cache(maxsize=100_000)
def _joins_differently(surname: str, first: str) -> bool:
    """True when pypinyin reads surname + first given character as a phrase (于思 -> yu sai)."""
    return tuple(lazy_pinyin(surname + first)) != _syllables(surname) + _syllables(first)


def pinyin_of(name: str) -> tuple[str, str]:
    """("wang xiu ying", "wxy"), exactly as `lazy_pinyin(name)` gives it.

    Cached per surname and per given name (a few thousand of each) because pypinyin costs ~30 µs a
    call and a million residents have hundreds of thousands of distinct full names; the rare surname
    that pypinyin joins with the next character into a phrase falls back to the whole name.
    """
    surname = surname_of(name)
    given = name[len(surname):]
    if given and _joins_differently(surname, given[0]):
        syllables: tuple[str, ...] = tuple(lazy_pinyin(name))
    else:
        syllables = _syllables(surname) + _syllables(given)
    return " ".join(syllables), "".join(s[0] for s in syllables if s)


@lru_cache(maxsize=1)
def _homophone_groups() -> dict[str, tuple[str, ...]]:
    pool: set[str] = set(_EXTRA_HOMOPHONE_POOL)
    for first, second in _ERA_CHARS.values():
        pool.update(first)
        pool.update(second)
    for by_sex in _SINGLE.values():
        for chars in by_sex.values():
            pool.update(chars)
    by_sound: dict[str, list[str]] = {}
    for ch in sorted(pool):
        by_sound.setdefault(lazy_pinyin(ch)[0], []).append(ch)
    return {ch: tuple(c for c in group if c != ch) for group in by_sound.values() for ch in group}


def homophone(rng: random.Random, ch: str) -> str | None:
    """Another character read the same way (a clerk hearing 'Xiù Yīng' may write 秀莹 for 秀英), or None."""
    options = _homophone_groups().get(ch, ())
    return rng.choice(options) if options else None


def surname_of(name: str) -> str:
    """The surname part, recognising the compound surnames we generate."""
    return name[:2] if len(name) > 2 and name[:2] in ("欧阳", "司马", "诸葛", "上官") else name[:1]
