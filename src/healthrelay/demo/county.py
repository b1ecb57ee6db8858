"""The fictional county of 青溪县 (Qingxi): its places and health organisations, without a database.

The *places and organisations* are fixed (the same for every seed), so demo logins and organisation
codes never change; the *people* (practitioners, residents) come from the seed. Coordinates spread over
a 60 km x 50 km county in the hills of a fictional province (云梦省), sized like domain.md.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import lru_cache

from pypinyin import lazy_pinyin

from healthrelay.directory.models import AllianceKind, Capability, MembershipRole, OrgKind, OrgLevel

COUNTY_NAME = "青溪县"
COUNTY_NAME_EN = "Qingxi County"
COUNTY_AREA_CODE = "439926"  # fictional administrative code (no real county uses 4399xx)
# Residents born or married in from neighbouring (equally fictional) counties carry their codes.
NEIGHBOUR_REGION_CODES = ("439901", "439921", "439923", "439927")
PROVINCE = "云梦省"
ALLIANCE_CODE = "QX-YGT"  # the county medical community; its presence means "the demo is built"

# The county's south-west corner and the size of a kilometre in degrees at this latitude.
_LAT0, _LON0 = 29.50, 111.20
_KM_LAT = 1 / 111.0
_KM_LON = 1 / (111.0 * math.cos(math.radians(29.72)))
_STRUCTURE_SEED = "qingxi-county-structure-v1"


def km_to_latlon(x_km: float, y_km: float) -> tuple[float, float]:
    return round(_LAT0 + y_km * _KM_LAT, 6), round(_LON0 + x_km * _KM_LON, 6)


# --------------------------------------------------------------------------------------------- places

@dataclass(frozen=True)
class TownshipDef:
    number: int  # 1..22, also the centre code's suffix
    name: str  # 石门镇
    slug: str  # shimen (for readable usernames)
    kind: str  # "urban" (街道, community centre), "town" (镇) or "xiang" (乡)
    x_km: float
    y_km: float
    villages: int
    regional: bool = False


TOWNSHIPS: tuple[TownshipDef, ...] = (
    TownshipDef(1, "城东街道", "chengdong", "urban", 32.5, 25.5, 5),
    TownshipDef(2, "城西街道", "chengxi", "urban", 27.5, 24.5, 5),
    TownshipDef(3, "石门镇", "shimen", "town", 10, 40, 9, regional=True),
    TownshipDef(4, "白沙镇", "baisha", "town", 48, 40, 9, regional=True),
    TownshipDef(5, "柳林镇", "liulin", "town", 12, 12, 9, regional=True),
    TownshipDef(6, "龙潭镇", "longtan", "town", 50, 11, 9, regional=True),
    TownshipDef(7, "清水镇", "qingshui", "town", 30, 43, 9, regional=True),
    TownshipDef(8, "马坪镇", "maping", "town", 30, 8, 9, regional=True),
    TownshipDef(9, "青山乡", "qingshan", "xiang", 3, 26, 7),
    TownshipDef(10, "桃源乡", "taoyuan", "xiang", 19, 30, 8),
    TownshipDef(11, "黄泥乡", "huangni", "xiang", 41, 31, 7),
    TownshipDef(12, "金竹乡", "jinzhu", "xiang", 57, 27, 8),
    TownshipDef(13, "杨家坪镇", "yangjiaping", "town", 20, 47, 8),
    TownshipDef(14, "双河镇", "shuanghe", "town", 41, 47, 8),
    TownshipDef(15, "茶园乡", "chayuan", "xiang", 3, 46, 7),
    TownshipDef(16, "高桥镇", "gaoqiao", "town", 21, 17, 8),
    TownshipDef(17, "枫树乡", "fengshu", "xiang", 39, 19, 7),
    TownshipDef(18, "大坪镇", "daping", "town", 57, 45, 8),
    TownshipDef(19, "梅溪乡", "meixi", "xiang", 4, 4, 7),
    TownshipDef(20, "鹿鸣乡", "luming", "xiang", 19, 3, 7),
    TownshipDef(21, "云台镇", "yuntai", "town", 41, 3, 8),
    TownshipDef(22, "兴隆镇", "xinglong", "town", 58, 4, 7),
)
COUNTY_SEAT_KM = (30.0, 25.0)

_URBAN_COMMUNITIES = ("东门社区", "南街社区", "文昌社区", "滨江社区", "新街社区",
                      "西关社区", "北门社区", "桥头社区", "学府社区", "城南社区")
_FAMILY_PREFIXES = "王李张刘陈杨黄周吴何罗谭向田彭胡邓唐龚万"
_NATURE_PREFIXES = "柳枫桃杏竹松石白青红龙凤马牛鹿鹤金铁高大小新老上下中东西南北双三五七九茶梅兰桂"
_SUFFIXES = "湾坪岭坡冲垭沟溪河桥塘坝山口庄寨园岗洲"
_ERA_VILLAGES = ("新华村", "红星村", "团结村", "胜利村", "光明村", "和平村", "建设村", "幸福村", "前进村", "联合村",
                 "东风村", "永丰村", "长兴村", "同心村")
_GRID_NUMERALS = "一二三四"


@dataclass(frozen=True)
class AreaDef:
    code: str
    name: str
    level: str  # county / township / village
    parent_code: str | None
    lat: float
    lon: float
    grids: tuple[str, ...] = ()


@dataclass(frozen=True)
class VillageSite:
    """What a resident generator needs to know about a village (no database ids)."""

    code: str  # area code, e.g. 439926103201
    name: str  # 柳湾村
    township_name: str  # 石门镇
    centre_code: str  # organisation code of the township/community centre
    clinic_code: str  # organisation code of the village clinic
    grids: tuple[str, ...]
    groups: int  # 村民小组 (used in address lines: 3组12号)
    weight: float  # relative population
    region_code: str = COUNTY_AREA_CODE
    urban: bool = False


def centre_code(t: TownshipDef) -> str:
    return f"QX-C{t.number:02d}"


def clinic_code(t: TownshipDef, village_index: int) -> str:
    return f"QX-C{t.number:02d}-V{village_index:02d}"


def township_area_code(t: TownshipDef) -> str:
    if t.kind == "urban":
        return f"{COUNTY_AREA_CODE}{t.number:03d}"
    return f"{COUNTY_AREA_CODE}{100 + t.number:03d}" if t.kind == "town" else f"{COUNTY_AREA_CODE}{200 + t.number:03d}"


def slug_of(name: str) -> str:
    return "".join(lazy_pinyin(name))


@dataclass(frozen=True)
class Geography:
    areas: tuple[AreaDef, ...]
    villages: tuple[VillageSite, ...]
    villages_by_township: dict[int, tuple[VillageSite, ...]] = field(hash=False)


@lru_cache(maxsize=1)
def geography() -> Geography:
    """Areas and villages: fixed for every seed so organisation names and logins never move."""
    rng = random.Random(_STRUCTURE_SEED)
    areas: list[AreaDef] = []
    lat, lon = km_to_latlon(*COUNTY_SEAT_KM)
    areas.append(AreaDef(COUNTY_AREA_CODE, COUNTY_NAME, "county", None, lat, lon))
    used: set[str] = set()
    urban_names = iter(_URBAN_COMMUNITIES)
    era_names = list(_ERA_VILLAGES)
    rng.shuffle(era_names)
    villages: list[VillageSite] = []
    by_township: dict[int, tuple[VillageSite, ...]] = {}
    for t in TOWNSHIPS:
        t_code = township_area_code(t)
        t_lat, t_lon = km_to_latlon(t.x_km, t.y_km)
        areas.append(AreaDef(t_code, t.name, "township", COUNTY_AREA_CODE, t_lat, t_lon))
        mine: list[VillageSite] = []
        for i in range(1, t.villages + 1):
            name = next(urban_names) if t.kind == "urban" else _village_name(rng, used, era_names)
            used.add(name)
            radius = rng.uniform(0.4, 2.0) if t.kind == "urban" else rng.uniform(1.5, 7.0)
            angle = rng.uniform(0, 2 * math.pi)
            x = min(59.5, max(0.5, t.x_km + radius * math.cos(angle)))
            y = min(49.5, max(0.5, t.y_km + radius * math.sin(angle)))
            v_lat, v_lon = km_to_latlon(x, y)
            n_grids = rng.choice((2, 3, 3, 4)) if t.kind != "urban" else 4
            grids = tuple(f"第{_GRID_NUMERALS[g]}网格" for g in range(n_grids))
            v_code = f"{t_code}{(i if t.kind == 'urban' else 200 + i):03d}"
            areas.append(AreaDef(v_code, name, "village", t_code, v_lat, v_lon, grids))
            weight = rng.uniform(2.0, 3.5) if t.kind == "urban" else rng.uniform(0.6, 1.8)
            if t.regional and i == 1:
                weight *= 1.6  # the market town around a regional centre
            site = VillageSite(code=v_code, name=name, township_name=t.name, centre_code=centre_code(t),
                               clinic_code=clinic_code(t, i), grids=grids,
                               groups=n_grids * rng.choice((2, 3)), weight=round(weight, 3),
                               urban=t.kind == "urban")
            mine.append(site)
        villages.extend(mine)
        by_township[t.number] = tuple(mine)
    return Geography(areas=tuple(areas), villages=tuple(villages), villages_by_township=by_township)


def _village_name(rng: random.Random, used: set[str], era_names: list[str]) -> str:
    while True:
        roll = rng.random()
        if roll < 0.08 and era_names:
            name = era_names.pop()
        elif roll < 0.38:
            name = f"{rng.choice(_FAMILY_PREFIXES)}家{rng.choice(_SUFFIXES)}村"
        else:
            name = f"{rng.choice(_NATURE_PREFIXES)}{rng.choice(_SUFFIXES)}村"
        if name not in used:
            return name


def demo_villages() -> tuple[VillageSite, ...]:
    """The demo county's villages, for `healthrelay.demo.residents.synthetic_residents`."""
    return geography().villages


# -------------------------------------------------------------------------------------- specialties

SPECIALTIES: tuple[tuple[str, str, str], ...] = (
    ("cardiology", "心血管内科", "Cardiology"),
    ("respiratory", "呼吸与危重症医学科", "Respiratory and Critical Care Medicine"),
    ("gastroenterology", "消化内科", "Gastroenterology"),
    ("neurology", "神经内科", "Neurology"),
    ("nephrology", "肾内科", "Nephrology"),
    ("endocrinology", "内分泌科", "Endocrinology"),
    ("hematology", "血液内科", "Haematology"),
    ("oncology", "肿瘤科", "Oncology"),
    ("general_surgery", "普通外科", "General Surgery"),
    ("orthopedics", "骨科", "Orthopaedics"),
    ("neurosurgery", "神经外科", "Neurosurgery"),
    ("urology", "泌尿外科", "Urology"),
    ("thoracic_surgery", "胸外科", "Thoracic Surgery"),
    ("obstetrics_gynecology", "妇产科", "Obstetrics and Gynaecology"),
    ("pediatrics", "儿科", "Paediatrics"),
    ("neonatology", "新生儿科", "Neonatology"),
    ("ophthalmology", "眼科", "Ophthalmology"),
    ("otolaryngology", "耳鼻咽喉科", "Otolaryngology"),
    ("stomatology", "口腔科", "Stomatology"),
    ("dermatology", "皮肤科", "Dermatology"),
    ("psychiatry", "精神科", "Psychiatry"),
    ("emergency", "急诊医学科", "Emergency Medicine"),
    ("critical_care", "重症医学科", "Critical Care Medicine"),
    ("anesthesiology", "麻醉科", "Anaesthesiology"),
    ("radiology", "医学影像科", "Radiology"),
    ("ultrasound", "超声医学科", "Ultrasound Medicine"),
    ("electrocardiology", "心电诊断科", "Electrocardiology"),
    ("laboratory", "医学检验科", "Laboratory Medicine"),
    ("pathology", "病理科", "Pathology"),
    ("rehabilitation", "康复医学科", "Rehabilitation Medicine"),
    ("geriatrics", "老年医学科", "Geriatrics"),
    ("infectious_disease", "感染性疾病科", "Infectious Diseases"),
    ("tcm", "中医科", "Traditional Chinese Medicine"),
    ("acupuncture", "针灸推拿科", "Acupuncture and Tuina"),
    ("general_practice", "全科医学科", "General Practice"),
    ("preventive_care", "预防保健科", "Preventive Care and Public Health"),
    ("pharmacy", "药剂科", "Pharmacy"),
    ("nursing", "护理", "Nursing"),
)
SPECIALTY_NAMES = {code: zh for code, zh, _ in SPECIALTIES}

# --------------------------------------------------------------------------------------- organisations

COUNTY_HOSPITAL = "QX-PH"
TCM_HOSPITAL = "QX-TCM"
MCH_HOSPITAL = "QX-MCH"
HEALTH_BUREAU = "QX-HB"
EMS_STATIONS = ("QX-EMS1", "QX-EMS2")
PROVINCIAL_GENERAL = "YM-PH"
PROVINCIAL_UNIVERSITY = "YM-MU1"
PROVINCIAL_TCM = "YM-TCM"
AID_HOSPITAL = "DB-CH"

# Department = (code, name, specialty code, capability note or "").
Dept = tuple[str, str, str]

_COUNTY_DEPTS: tuple[Dept, ...] = (
    ("CARD", "心血管内科", "cardiology"), ("RESP", "呼吸与危重症医学科", "respiratory"),
    ("GAST", "消化内科", "gastroenterology"), ("NEUR", "神经内科", "neurology"), ("NEPH", "肾内科", "nephrology"),
    ("ENDO", "内分泌科", "endocrinology"), ("ONCO", "肿瘤科", "oncology"), ("GSUR", "普通外科", "general_surgery"),
    ("ORTH", "骨科", "orthopedics"), ("NSUR", "神经外科", "neurosurgery"), ("UROL", "泌尿外科", "urology"),
    ("THOR", "胸外科", "thoracic_surgery"), ("OBGY", "妇产科", "obstetrics_gynecology"), ("PEDS", "儿科", "pediatrics"),
    ("OPHT", "眼科", "ophthalmology"), ("ENT", "耳鼻咽喉科", "otolaryngology"), ("STOM", "口腔科", "stomatology"),
    ("DERM", "皮肤科", "dermatology"), ("EMER", "急诊科", "emergency"), ("ICU", "重症医学科", "critical_care"),
    ("ANES", "麻醉科", "anesthesiology"), ("REHB", "康复医学科", "rehabilitation"),
    ("GERI", "老年医学科", "geriatrics"), ("INFD", "感染性疾病科", "infectious_disease"),
    # The resource-sharing centres (资源共享中心) of the alliance sit in these departments.
    ("RADI", "医学影像中心", "radiology"), ("US", "超声医学科", "ultrasound"),
    ("ECG", "心电诊断中心", "electrocardiology"), ("LAB", "医学检验中心", "laboratory"),
    ("PATH", "病理诊断中心", "pathology"), ("PHAR", "药剂科", "pharmacy"),
)
_TCM_DEPTS: tuple[Dept, ...] = (
    ("TCMI", "中医内科", "tcm"), ("ACUP", "针灸推拿科", "acupuncture"), ("TCMO", "中医骨伤科", "orthopedics"),
    ("REHB", "康复科", "rehabilitation"), ("SPLE", "脾胃病科", "gastroenterology"), ("EMER", "急诊科", "emergency"),
    ("RADI", "放射科", "radiology"), ("LAB", "检验科", "laboratory"), ("PHAR", "中药房", "pharmacy"),
)
_MCH_DEPTS: tuple[Dept, ...] = (
    ("OBST", "产科", "obstetrics_gynecology"), ("GYNE", "妇科", "obstetrics_gynecology"),
    ("PEDS", "儿科", "pediatrics"),
    ("NEON", "新生儿科", "neonatology"), ("US", "超声科", "ultrasound"), ("LAB", "检验科", "laboratory"),
    ("PHAR", "药剂科", "pharmacy"),
)
_TOWNSHIP_DEPTS: tuple[Dept, ...] = (
    ("GP", "全科医学科", "general_practice"), ("TCM", "中医科", "tcm"), ("PUBH", "公共卫生科", "preventive_care"),
    ("TECH", "医技科", "radiology"), ("PHAR", "药房", "pharmacy"),
)
_REGIONAL_EXTRA_DEPTS: tuple[Dept, ...] = (
    ("INT", "内科", "general_practice"), ("SURG", "外科", "general_surgery"),
    ("OBGY", "妇产科", "obstetrics_gynecology"), ("EMER", "急诊科", "emergency"),
)
_EMS_DEPTS: tuple[Dept, ...] = (("DISP", "调度科", "emergency"), ("PREH", "院前急救科", "emergency"))
_BUREAU_DEPTS: tuple[Dept, ...] = (("MEDA", "医政医管股", "preventive_care"),)


def _provincial_depts(specialties: tuple[str, ...]) -> tuple[Dept, ...]:
    return tuple((code.upper(), SPECIALTY_NAMES[code], code) for code in specialties)


_PROV_GENERAL_SPECS = ("cardiology", "respiratory", "gastroenterology", "neurology", "nephrology", "endocrinology",
                       "hematology", "oncology", "general_surgery", "orthopedics", "neurosurgery", "urology",
                       "thoracic_surgery", "obstetrics_gynecology", "pediatrics", "neonatology", "ophthalmology",
                       "otolaryngology", "emergency", "critical_care", "radiology", "ultrasound",
                       "electrocardiology", "laboratory", "pathology", "rehabilitation", "geriatrics")
_PROV_UNIV_SPECS = ("cardiology", "gastroenterology", "neurology", "endocrinology", "oncology", "general_surgery",
                    "orthopedics", "neurosurgery", "urology", "obstetrics_gynecology", "pediatrics",
                    "ophthalmology", "otolaryngology", "stomatology", "dermatology", "psychiatry", "radiology",
                    "pathology", "infectious_disease", "anesthesiology")
_PROV_TCM_SPECS = ("tcm", "acupuncture", "rehabilitation", "gastroenterology", "orthopedics", "geriatrics")
_AID_SPECS = ("cardiology", "neurology", "general_surgery", "orthopedics", "critical_care", "radiology",
              "pediatrics", "obstetrics_gynecology", "anesthesiology", "emergency")

_FULL_COUNTY = (Capability.CT, Capability.MRI, Capability.DR, Capability.ULTRASOUND, Capability.ECG, Capability.LAB,
                Capability.PCI, Capability.THROMBOLYSIS, Capability.ENDOSCOPY, Capability.PATHOLOGY,
                Capability.DIALYSIS)
_PROVINCIAL = (*_FULL_COUNTY,)


@dataclass(frozen=True)
class OrgDef:
    code: str
    name: str
    name_en: str
    level: OrgLevel
    kind: OrgKind
    parent_code: str | None = None
    area_code: str | None = None
    is_regional_centre: bool = False
    address: str = ""
    phone: str = ""
    lat: float | None = None
    lon: float | None = None
    capabilities: tuple[Capability, ...] = ()
    departments: tuple[Dept, ...] = ()
    township: int | None = None  # TownshipDef.number for centres and clinics


@lru_cache(maxsize=1)
def organisations() -> tuple[OrgDef, ...]:
    """Every demo organisation, parents before children."""
    geo = geography()
    rng = random.Random(_STRUCTURE_SEED + ":orgs")
    seat = km_to_latlon(*COUNTY_SEAT_KM)
    capital = (30.58, 114.30)  # the fictional provincial capital, ~300 km east
    orgs: list[OrgDef] = [
        OrgDef(PROVINCIAL_GENERAL, f"{PROVINCE}人民医院", "Yunmeng Provincial People's Hospital", OrgLevel.PROVINCIAL,
               OrgKind.GENERAL_HOSPITAL, address=f"{PROVINCE}楚江市解放大道238号", phone="027-88041911",
               lat=capital[0], lon=capital[1], capabilities=_PROVINCIAL,
               departments=_provincial_depts(_PROV_GENERAL_SPECS)),
        OrgDef(PROVINCIAL_UNIVERSITY, "云梦医科大学附属第一医院",
               "First Affiliated Hospital of Yunmeng Medical University", OrgLevel.PROVINCIAL, OrgKind.GENERAL_HOSPITAL,
               address=f"{PROVINCE}楚江市学院路1号",
               phone="027-85726114", lat=capital[0] + 0.03, lon=capital[1] - 0.05, capabilities=_PROVINCIAL,
               departments=_provincial_depts(_PROV_UNIV_SPECS)),
        OrgDef(PROVINCIAL_TCM, f"{PROVINCE}中医院", "Yunmeng Provincial Hospital of TCM", OrgLevel.PROVINCIAL,
               OrgKind.TCM_HOSPITAL, address=f"{PROVINCE}楚江市花园山4号", phone="027-88929008",
               lat=capital[0] - 0.02, lon=capital[1] + 0.02,
               capabilities=(Capability.CT, Capability.MRI, Capability.DR, Capability.ULTRASOUND, Capability.ECG,
                             Capability.LAB, Capability.ENDOSCOPY),
               departments=_provincial_depts(_PROV_TCM_SPECS)),
        OrgDef(AID_HOSPITAL, "东滨市中心医院", "Dongbin Central Hospital (paired-aid partner)", OrgLevel.TERTIARY,
               OrgKind.GENERAL_HOSPITAL, address="东海省东滨市人民路100号", phone="0571-87065701",
               lat=30.27, lon=120.15, capabilities=_PROVINCIAL, departments=_provincial_depts(_AID_SPECS)),
        OrgDef(HEALTH_BUREAU, f"{COUNTY_NAME}卫生健康局", "Qingxi County Health Bureau", OrgLevel.SECONDARY,
               OrgKind.HEALTH_BUREAU, area_code=COUNTY_AREA_CODE, address=f"{COUNTY_NAME}城关人民路8号",
               phone="0718-6622301", lat=seat[0] + 0.004, lon=seat[1] + 0.003, departments=_BUREAU_DEPTS),
        OrgDef(COUNTY_HOSPITAL, f"{COUNTY_NAME}人民医院", "Qingxi County People's Hospital", OrgLevel.SECONDARY,
               OrgKind.GENERAL_HOSPITAL, area_code=COUNTY_AREA_CODE, address=f"{COUNTY_NAME}城关健康路1号",
               phone="0718-6623120", lat=seat[0], lon=seat[1], capabilities=_FULL_COUNTY, departments=_COUNTY_DEPTS),
        OrgDef(TCM_HOSPITAL, f"{COUNTY_NAME}中医医院", "Qingxi County Hospital of TCM", OrgLevel.SECONDARY,
               OrgKind.TCM_HOSPITAL, area_code=COUNTY_AREA_CODE, address=f"{COUNTY_NAME}城关杏林路16号",
               phone="0718-6625081", lat=seat[0] - 0.012, lon=seat[1] - 0.018,
               capabilities=(Capability.CT, Capability.DR, Capability.ULTRASOUND, Capability.ECG, Capability.LAB,
                             Capability.ENDOSCOPY, Capability.THROMBOLYSIS),
               departments=_TCM_DEPTS),
        OrgDef(MCH_HOSPITAL, f"{COUNTY_NAME}妇幼保健院", "Qingxi County Maternal and Child Health Hospital",
               OrgLevel.SECONDARY, OrgKind.MATERNAL_CHILD, area_code=COUNTY_AREA_CODE,
               address=f"{COUNTY_NAME}城关育才路22号", phone="0718-6627730", lat=seat[0] + 0.010,
               lon=seat[1] - 0.006,
               capabilities=(Capability.DR, Capability.ULTRASOUND, Capability.ECG, Capability.LAB),
               departments=_MCH_DEPTS),
        OrgDef(EMS_STATIONS[0], f"{COUNTY_NAME}急救中心城区急救站", "Qingxi Emergency Centre, city station",
               OrgLevel.SECONDARY, OrgKind.EMERGENCY_STATION, parent_code=COUNTY_HOSPITAL,
               area_code=COUNTY_AREA_CODE, address=f"{COUNTY_NAME}城关健康路1号（县人民医院内）", phone="0718-120",
               lat=seat[0] + 0.001, lon=seat[1] + 0.001, capabilities=(Capability.AMBULANCE, Capability.ECG),
               departments=_EMS_DEPTS),
        OrgDef(EMS_STATIONS[1], f"{COUNTY_NAME}急救中心中医院急救站", "Qingxi Emergency Centre, TCM hospital station",
               OrgLevel.SECONDARY, OrgKind.EMERGENCY_STATION, parent_code=TCM_HOSPITAL,
               area_code=COUNTY_AREA_CODE, address=f"{COUNTY_NAME}城关杏林路16号（县中医医院内）",
               phone="0718-6625120", lat=seat[0] - 0.011, lon=seat[1] - 0.017,
               capabilities=(Capability.AMBULANCE, Capability.ECG), departments=_EMS_DEPTS),
    ]
    substation = 0
    for t in TOWNSHIPS:
        t_code = township_area_code(t)
        t_lat, t_lon = km_to_latlon(t.x_km, t.y_km)
        if t.kind == "urban":
            name, kind, level = f"{t.name}社区卫生服务中心", OrgKind.COMMUNITY_CENTRE, OrgLevel.COMMUNITY
            name_en = f"{t.slug.title()} Community Health Service Centre"
        else:
            suffix = "中心卫生院" if t.regional else "卫生院"
            name, kind, level = f"{t.name}{suffix}", OrgKind.TOWNSHIP_CENTRE, OrgLevel.TOWNSHIP
            name_en = f"{t.slug.title()} {'Central ' if t.regional else ''}Township Health Centre"
        caps = [Capability.DR, Capability.ULTRASOUND, Capability.ECG, Capability.LAB]
        if t.regional:
            caps.append(Capability.THROMBOLYSIS)
            if t.number in (3, 4, 6):  # three of the six regional centres have a CT scanner
                caps.append(Capability.CT)
            if t.number in (3, 6):
                caps.append(Capability.ENDOSCOPY)
        elif t.kind == "xiang" and rng.random() < 0.3:
            caps.remove(Capability.DR)  # a small xiang clinic without an X-ray room
        depts = _TOWNSHIP_DEPTS + (_REGIONAL_EXTRA_DEPTS if t.regional else ())
        orgs.append(OrgDef(centre_code(t), name, name_en, level, kind, parent_code=COUNTY_HOSPITAL, area_code=t_code,
                           is_regional_centre=t.regional, address=f"{COUNTY_NAME}{t.name}{_street(rng)}",
                           phone=f"0718-66{rng.randrange(10000, 99999)}", lat=t_lat, lon=t_lon,
                           capabilities=tuple(caps), departments=depts, township=t.number))
        if t.regional:
            substation += 1
            orgs.append(OrgDef(f"QX-EMS-S{substation}", f"{COUNTY_NAME}急救中心{t.name}急救分站",
                               f"Qingxi Emergency Centre, {t.slug.title()} sub-station", OrgLevel.TOWNSHIP,
                               OrgKind.EMERGENCY_SUBSTATION, parent_code=EMS_STATIONS[substation % 2],
                               area_code=t_code, address=f"{COUNTY_NAME}{t.name}（{name}内）",
                               phone=f"0718-67{rng.randrange(10000, 99999)}", lat=t_lat + 0.0008,
                               lon=t_lon + 0.0008, capabilities=(Capability.AMBULANCE, Capability.ECG),
                               departments=(("PREH", "院前急救科", "emergency"),), township=t.number))
    for t in TOWNSHIPS:
        area_lat = {a.code: (a.lat, a.lon) for a in geo.areas}
        for v in geo.villages_by_township[t.number]:
            v_lat, v_lon = area_lat[v.code]
            if v.urban:
                name, name_en = f"{v.name}卫生服务站", f"{slug_of(v.name[:-2]).title()} Community Health Station"
            else:
                name, name_en = f"{v.name}卫生室", f"{slug_of(v.name[:-1]).title()} Village Clinic"
            caps = (Capability.ECG,) if rng.random() < 0.35 or v.urban else ()
            orgs.append(OrgDef(v.clinic_code, name, name_en, OrgLevel.VILLAGE, OrgKind.VILLAGE_CLINIC,
                               parent_code=centre_code(t), area_code=v.code,
                               address=f"{COUNTY_NAME}{t.name}{v.name}{rng.randint(1, v.groups)}组",
                               phone=f"1{rng.choice('3589')}{rng.randrange(10**8, 10**9)}",
                               lat=round(v_lat + 0.0004, 6), lon=round(v_lon - 0.0004, 6), capabilities=caps,
                               township=t.number))
    return tuple(orgs)


def _street(rng: random.Random) -> str:
    road = rng.choice(("解放", "人民", "建设", "胜利", "新华", "中山")) + rng.choice(("路", "街"))
    return f"{road}{rng.randint(1, 88)}号"


@lru_cache(maxsize=1)
def organisations_by_code() -> dict[str, OrgDef]:
    return {o.code: o for o in organisations()}


# ----------------------------------------------------------------------------------------- alliances

@dataclass(frozen=True)
class AllianceDef:
    code: str
    name: str
    kind: AllianceKind
    description: str
    members: tuple[tuple[str, MembershipRole], ...]


@lru_cache(maxsize=1)
def alliances() -> tuple[AllianceDef, ...]:
    orgs = organisations()
    care = [o for o in orgs if o.kind != OrgKind.HEALTH_BUREAU and o.level != OrgLevel.PROVINCIAL
            and o.code != AID_HOSPITAL]
    community = [(COUNTY_HOSPITAL, MembershipRole.LEAD)]
    community += [(o.code, MembershipRole.MEMBER) for o in care if o.code != COUNTY_HOSPITAL]
    community += [(c, MembershipRole.SUPPORTING) for c in (PROVINCIAL_GENERAL, PROVINCIAL_UNIVERSITY, PROVINCIAL_TCM)]
    regional = [o.code for o in orgs if o.is_regional_centre]
    chest_pain = [(PROVINCIAL_GENERAL, MembershipRole.LEAD), (PROVINCIAL_UNIVERSITY, MembershipRole.SUPPORTING)]
    chest_pain += [(c, MembershipRole.MEMBER) for c in (COUNTY_HOSPITAL, TCM_HOSPITAL, *EMS_STATIONS, *regional)]
    aid = [(AID_HOSPITAL, MembershipRole.LEAD)]
    aid += [(c, MembershipRole.MEMBER) for c in (COUNTY_HOSPITAL, TCM_HOSPITAL, MCH_HOSPITAL)]
    return (
        AllianceDef(ALLIANCE_CODE, f"{COUNTY_NAME}紧密型县域医疗卫生共同体", AllianceKind.COUNTY_COMMUNITY,
                    "县人民医院牵头，县中医医院、妇幼保健院、22 家乡镇卫生院/社区卫生服务中心及全部村卫生室参加；"
                    "省级医院对口支持。一家人、一本账、一盘棋。",
                    tuple(community)),
        AllianceDef("YM-CPA", f"{PROVINCE}胸痛中心专科联盟", AllianceKind.SPECIALTY_ALLIANCE,
                    "省人民医院胸痛中心牵头，县级医院、急救站与片区医疗中心组成胸痛救治网络。", tuple(chest_pain)),
        AllianceDef("DB-QX-AID", f"东滨市—{COUNTY_NAME}对口帮扶", AllianceKind.CROSS_REGION_AID,
                    "东海省东滨市中心医院对口帮扶青溪县县级医院：专家轮派（三个月一批）、带教、进修。", tuple(aid)),
    )


# ------------------------------------------------------------------------------------ expert studios

# (specialty, host, home) — 32 studios in 23 disciplines (domain.md: 31 studios in 23 disciplines).
STUDIOS: tuple[tuple[str, str, str], ...] = (
    ("cardiology", COUNTY_HOSPITAL, PROVINCIAL_GENERAL), ("cardiology", COUNTY_HOSPITAL, PROVINCIAL_UNIVERSITY),
    ("respiratory", COUNTY_HOSPITAL, PROVINCIAL_GENERAL), ("gastroenterology", COUNTY_HOSPITAL, PROVINCIAL_GENERAL),
    ("gastroenterology", COUNTY_HOSPITAL, PROVINCIAL_UNIVERSITY), ("neurology", COUNTY_HOSPITAL, PROVINCIAL_GENERAL),
    ("neurology", COUNTY_HOSPITAL, AID_HOSPITAL), ("nephrology", COUNTY_HOSPITAL, PROVINCIAL_GENERAL),
    ("endocrinology", COUNTY_HOSPITAL, PROVINCIAL_UNIVERSITY), ("endocrinology", COUNTY_HOSPITAL, PROVINCIAL_GENERAL),
    ("oncology", COUNTY_HOSPITAL, PROVINCIAL_UNIVERSITY), ("general_surgery", COUNTY_HOSPITAL, PROVINCIAL_GENERAL),
    ("general_surgery", COUNTY_HOSPITAL, AID_HOSPITAL), ("orthopedics", COUNTY_HOSPITAL, PROVINCIAL_UNIVERSITY),
    ("orthopedics", COUNTY_HOSPITAL, AID_HOSPITAL), ("neurosurgery", COUNTY_HOSPITAL, PROVINCIAL_GENERAL),
    ("urology", COUNTY_HOSPITAL, PROVINCIAL_UNIVERSITY), ("thoracic_surgery", COUNTY_HOSPITAL, PROVINCIAL_GENERAL),
    ("ophthalmology", COUNTY_HOSPITAL, PROVINCIAL_UNIVERSITY),
    ("otolaryngology", COUNTY_HOSPITAL, PROVINCIAL_UNIVERSITY), ("emergency", COUNTY_HOSPITAL, AID_HOSPITAL),
    ("critical_care", COUNTY_HOSPITAL, PROVINCIAL_GENERAL), ("radiology", COUNTY_HOSPITAL, PROVINCIAL_GENERAL),
    ("pathology", COUNTY_HOSPITAL, PROVINCIAL_UNIVERSITY), ("geriatrics", COUNTY_HOSPITAL, PROVINCIAL_GENERAL),
    ("tcm", TCM_HOSPITAL, PROVINCIAL_TCM), ("tcm", TCM_HOSPITAL, PROVINCIAL_TCM),
    ("acupuncture", TCM_HOSPITAL, PROVINCIAL_TCM), ("rehabilitation", TCM_HOSPITAL, PROVINCIAL_TCM),
    ("obstetrics_gynecology", MCH_HOSPITAL, PROVINCIAL_GENERAL), ("pediatrics", MCH_HOSPITAL, PROVINCIAL_UNIVERSITY),
    ("pediatrics", COUNTY_HOSPITAL, AID_HOSPITAL),
)


def department_for(org: OrgDef, specialty: str) -> str | None:
    """The code of the host's department for a specialty (the first one that matches)."""
    for code, _name, spec in org.departments:
        if spec == specialty:
            return code
    return None
