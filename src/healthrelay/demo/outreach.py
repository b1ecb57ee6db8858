"""Demo outreach (请进来、沉下去): a year of expert studios, the paired-aid rotations and the county's weekly
extension clinics, with what happened at each session, so the calendar, the booking pages, the impact reports
and the roster planner have something real to show.

- Every expert studio (`Team` of kind expert_studio) has an agreement; one of them (QX-STUDIO-20, ENT) ended
  last month, so planning a session for it is refused — the agreement rule at work.
- 东滨市中心医院 → 青溪县人民医院 paired aid: 9 batches of three-month rotations, the last one current, 35
  rotations (a few as 挂职科室主任), each rotating expert doing teaching rounds, clinics and operations.
- Weekly extension clinics (延伸门诊) of the county specialists who also hold a post at a regional centre
  (staff._second_posts: cardiology and endocrinology at 石门/柳林/清水, neurology and geriatrics at
  白沙/龙潭/马坪): an `OutreachSchedule` per doctor and centre from a year ago to two months ahead, holidays
  skipped (Spring Festival, Labour Day, National Day), one future date cancelled.
- Studio visits two to four times a month inside the agreement, some at township centres (下沉到乡镇).
- Past sessions are done, with activity records (patients from the host's registrations or the township's
  villages, operations, trainees, lecture audiences); the last two of `expert.cardio` wait for him to record.
  Clinics have bookings (attended, a few no-shows and cancellations; future ones booked, some full with a
  waitlist). The next 石门镇 clinic always has free places for `patient.shimen`.
- New techniques, traineeships (进修 and 导师制) with progress notes, and availability for every studio expert
  and every county specialist who goes down, so the roster planner can propose next month.

Each person holds at most one session per half-day (mornings 08:30, afternoons 14:30), so nobody is in two
places at once even with the road time between hosts (within the county, well under the three-hour gap).
Deterministic for a seed and a day; bulk inserts with ids reserved up front (COPY on PostgreSQL).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.core.db import LOCAL_TZ
from healthrelay.demo import county
from healthrelay.demo.bulk import insert_rows
from healthrelay.directory.models import (
    Alliance,
    Area,
    Department,
    Organisation,
    OrgKind,
    Post,
    Practitioner,
    Specialty,
    Team,
    TeamKind,
    TeamMember,
    TitleGrade,
)
from healthrelay.outreach.models import (
    ActivityPatient,
    ActivityProcedure,
    ActivityTrainee,
    AidBatch,
    AidRelationship,
    AidRotation,
    ExpertAvailability,
    NewTechnique,
    OutreachBooking,
    OutreachSchedule,
    OutreachSession,
    OutreachSetting,
    SessionActivity,
    StudioAgreement,
    Traineeship,
    TraineeshipProgress,
)
from healthrelay.patients.models import Patient, PatientRegistration

PAST_DAYS = 365  # sessions from a year ago
STUDIO_AHEAD_DAYS = 28  # studio visits planned four weeks ahead
SCHEDULE_AHEAD_DAYS = 61  # weekly clinics published two months ahead
AID_CODE = "DB-QX-AID-2025"
AID_BATCHES = 9
AID_ROTATIONS = 35
EXPIRED_STUDIO = "QX-STUDIO-20"  # its agreement ended last month
SHOWCASE_HOST = county.centre_code(county.TOWNSHIPS[2])  # 石门镇中心卫生院
SHOWCASE_EXPERT = f"{county.PROVINCIAL_GENERAL}-CARDIOLOGY-1"  # expert.cardio
UNRECORDED = 2  # expert.cardio's latest past sessions left for him to record

# (start, minutes) of the two half-day slots; a person holds at most one session per slot.
_SLOTS = {"am": ("08:30", 180), "pm": ("14:30", 150)}
_MINUTES = {"clinic": 180, "teaching_round": 120, "demonstration_operation": 180, "guided_procedure": 150,
            "case_discussion": 90, "lecture": 90}
_KIND_ZH = {"clinic": "专家门诊", "teaching_round": "教学查房", "demonstration_operation": "示范手术",
            "guided_procedure": "带教操作", "case_discussion": "疑难病例讨论", "lecture": "专题讲座"}
_OUTCOMES = (("treated_locally", 70), ("follow_up_locally", 15), ("admitted_locally", 7), ("referred_up", 8))

# Weekly extension clinics: (practitioner code, township number, weekday), one morning each.
_EXTENSION = (
    ("CARD", 3, 1), ("CARD", 5, 3), ("CARD", 7, 4), ("ENDO", 3, 2), ("ENDO", 5, 0), ("ENDO", 7, 3),
    ("NEUR", 4, 1), ("NEUR", 6, 2), ("NEUR", 8, 3), ("GERI", 4, 0), ("GERI", 6, 3), ("GERI", 8, 4),
)

# Spring Festival (正月初一) by year; the week from New Year's Eve is a holiday.
_SPRING_FESTIVAL = {2024: date(2024, 2, 10), 2025: date(2025, 1, 29), 2026: date(2026, 2, 17),
                    2027: date(2027, 2, 6), 2028: date(2028, 1, 26), 2029: date(2029, 2, 13),
                    2030: date(2030, 2, 3), 2031: date(2031, 1, 23), 2032: date(2032, 2, 11)}

_PROCEDURES: dict[str, tuple[str, ...]] = {
    "cardiology": ("冠状动脉造影术", "经皮冠状动脉介入治疗（PCI）", "永久起搏器植入术", "临时起搏器植入术"),
    "respiratory": ("支气管镜检查及肺泡灌洗", "经支气管镜肺活检", "胸腔闭式引流术"),
    "gastroenterology": ("胃镜下息肉切除术（EMR）", "内镜下食管静脉曲张套扎术", "结肠镜检查及活检", "ERCP 取石术"),
    "neurology": ("全脑血管造影（DSA）", "静脉溶栓（rt-PA）", "腰椎穿刺术"),
    "nephrology": ("自体动静脉内瘘成形术", "长期透析导管置入术", "超声引导肾穿刺活检"),
    "endocrinology": ("胰岛素泵置入", "动态血糖监测探头植入", "糖尿病足清创术"),
    "oncology": ("PICC 置管术", "胸腔灌注化疗", "CT 引导下穿刺活检"),
    "general_surgery": ("腹腔镜胆囊切除术", "腹腔镜阑尾切除术", "腹股沟疝无张力修补术", "甲状腺腺叶切除术"),
    "orthopedics": ("膝关节镜下半月板成形术", "人工髋关节置换术", "经皮椎体成形术（PVP）", "椎间孔镜髓核摘除术"),
    "neurosurgery": ("慢性硬膜下血肿钻孔引流术", "脑室外引流术", "颅内血肿微创穿刺术"),
    "urology": ("输尿管软镜碎石术", "经尿道前列腺电切术（TURP）", "经皮肾镜取石术"),
    "thoracic_surgery": ("胸腔镜肺楔形切除术", "胸腔镜肺大泡切除术", "肋骨骨折内固定术"),
    "obstetrics_gynecology": ("宫腔镜检查及治疗", "腹腔镜子宫肌瘤剔除术", "子宫下段剖宫产术"),
    "pediatrics": ("小儿腰椎穿刺术", "新生儿气管插管", "小儿骨髓穿刺术"),
    "ophthalmology": ("白内障超声乳化及人工晶体植入术", "翼状胬肉切除术", "眼底激光光凝术"),
    "otolaryngology": ("鼻内镜鼻窦手术", "扁桃体切除术", "支撑喉镜声带息肉摘除术"),
    "emergency": ("床旁超声引导深静脉置管", "紧急气管插管", "心包穿刺术"),
    "critical_care": ("床旁连续性血液净化（CRRT）", "经皮扩张气管切开术", "纤支镜床旁吸痰"),
    "radiology": ("CT 引导下肺穿刺活检", "CT 引导下囊肿穿刺引流"),
    "pathology": ("术中冰冻切片诊断", "细针穿刺细胞学检查"),
    "geriatrics": ("老年综合评估（CGA）", "吞咽功能评估及训练"),
    "tcm": ("穴位埋线", "中药熏蒸", "督灸"),
    "acupuncture": ("针刀松解术", "温针灸", "腹针疗法"),
    "rehabilitation": ("吞咽功能电刺激治疗", "肉毒素注射痉挛治疗", "体外冲击波治疗"),
}
_SURGICAL = {"general_surgery", "orthopedics", "neurosurgery", "urology", "thoracic_surgery",
             "obstetrics_gynecology", "ophthalmology", "otolaryngology", "cardiology", "gastroenterology"}
_DIAGNOSES: dict[str, tuple[str, ...]] = {
    "cardiology": ("高血压病3级", "冠状动脉粥样硬化性心脏病", "心房颤动", "慢性心力衰竭", "稳定型心绞痛"),
    "respiratory": ("慢性阻塞性肺疾病", "支气管哮喘", "社区获得性肺炎", "肺结节待查"),
    "gastroenterology": ("慢性萎缩性胃炎", "消化性溃疡", "结肠息肉", "肝硬化代偿期"),
    "neurology": ("脑梗死恢复期", "短暂性脑缺血发作", "帕金森病", "偏头痛", "周围神经病"),
    "nephrology": ("慢性肾脏病3期", "糖尿病肾病", "肾病综合征"),
    "endocrinology": ("2型糖尿病", "糖尿病周围神经病变", "甲状腺功能亢进症", "甲状腺结节", "骨质疏松症"),
    "oncology": ("肺癌术后随访", "胃癌化疗后", "乳腺癌术后内分泌治疗"),
    "general_surgery": ("胆囊结石伴慢性胆囊炎", "腹股沟斜疝", "甲状腺结节", "慢性阑尾炎"),
    "orthopedics": ("膝骨关节炎", "腰椎间盘突出症", "股骨颈骨折术后", "肩周炎"),
    "neurosurgery": ("慢性硬膜下血肿", "脑出血恢复期", "颅脑外伤后遗症"),
    "urology": ("输尿管结石", "良性前列腺增生", "肾囊肿"),
    "thoracic_surgery": ("肺结节", "自发性气胸", "肋骨骨折"),
    "obstetrics_gynecology": ("子宫肌瘤", "围绝经期综合征", "高危妊娠随访", "慢性盆腔炎"),
    "pediatrics": ("小儿支气管肺炎", "生长发育迟缓", "小儿腹泻病", "过敏性鼻炎"),
    "ophthalmology": ("年龄相关性白内障", "糖尿病视网膜病变", "青光眼", "翼状胬肉"),
    "otolaryngology": ("慢性鼻窦炎", "分泌性中耳炎", "慢性扁桃体炎", "突发性耳聋"),
    "emergency": ("急性胸痛待查", "有机磷中毒恢复期", "多发伤术后"),
    "critical_care": ("脓毒症恢复期", "呼吸衰竭", "重症肺炎"),
    "radiology": ("肺结节影像随访", "腰椎退行性变"),
    "pathology": ("甲状腺结节细胞学", "乳腺肿块病理会诊"),
    "geriatrics": ("老年衰弱综合征", "多重用药", "认知功能障碍", "跌倒高风险"),
    "tcm": ("胃脘痛（脾胃虚弱证）", "眩晕（肝阳上亢证）", "不寐（心脾两虚证）"),
    "acupuncture": ("颈椎病", "腰痛（寒湿证）", "面瘫"),
    "rehabilitation": ("脑卒中后偏瘫", "腰椎术后功能障碍", "膝关节置换术后"),
}
_TECHNIQUES: dict[str, tuple[str, str]] = {
    "cardiology": ("急诊经皮冠状动脉介入治疗（急诊 PCI）", "胸痛患者在县内完成再灌注，缩短门球时间"),
    "gastroenterology": ("内镜黏膜下剥离术（ESD）", "早期消化道癌县内微创切除"),
    "neurology": ("急性缺血性脑卒中血管内取栓", "大血管闭塞患者县内取栓"),
    "general_surgery": ("腹腔镜下胃癌根治术", "县内开展消化道肿瘤微创根治"),
    "orthopedics": ("单髁膝关节置换术", "膝骨关节炎保膝治疗"),
    "urology": ("输尿管软镜钬激光碎石术", "上尿路结石县内微创治疗"),
    "thoracic_surgery": ("单孔胸腔镜肺叶切除术", "早期肺癌县内手术"),
    "critical_care": ("床旁连续性血液净化（CRRT）", "危重患者县内血液净化"),
    "nephrology": ("腹膜透析置管术", "终末期肾病居家透析"),
    "ophthalmology": ("玻璃体腔注药术", "糖尿病黄斑水肿县内治疗"),
    "otolaryngology": ("鼻内镜下鼻中隔矫正术", "鼻腔通气障碍微创治疗"),
    "respiratory": ("经支气管镜冷冻肺活检", "间质性肺病病理诊断"),
    "pediatrics": ("新生儿无创呼吸支持（CPAP）", "早产儿呼吸支持县内完成"),
    "obstetrics_gynecology": ("宫腔镜下子宫内膜息肉电切术", "县内妇科微创"),
    "anesthesiology": ("超声引导下神经阻滞麻醉", "老年髋部骨折麻醉更安全"),
    "emergency": ("床旁超声快速评估（FAST）", "创伤患者快速分诊"),
    "radiology": ("CT 冠状动脉成像（CTA）", "胸痛患者无创筛查"),
    "rehabilitation": ("吞咽障碍球囊扩张术", "卒中后吞咽障碍康复"),
}
_TOWNSHIP_TECHNIQUES = (
    ("gastroenterology", "无痛胃镜检查", "片区中心首次开展镇静下胃镜"),
    ("neurology", "急性缺血性脑卒中静脉溶栓", "卒中患者在片区中心完成溶栓后上转"),
    ("cardiology", "心肌梗死溶栓（替奈普酶）", "胸痛患者转运前在片区中心溶栓"),
    ("general_surgery", "清创缝合及小型体表肿物切除", "小手术不出镇"),
)
AID_LEADS = 5  # rotations posted as 挂职科室主任 (discipline leads)
_BATCH_THEMES = ("胸痛中心建设", "卒中绿色通道", "微创外科", "重症救治", "危重孕产妇救治", "儿科急救")


def _at(day: date, hhmm: str) -> datetime:
    hour, minute = (int(x) for x in hhmm.split(":"))
    return datetime.combine(day, time(hour, minute), tzinfo=LOCAL_TZ)


def _holidays(first: date, last: date) -> set[date]:
    """Public holidays with no expert sessions: Spring Festival week, Labour Day, National Day, New Year."""
    out: set[date] = set()
    for year in range(first.year, last.year + 1):
        spring = _SPRING_FESTIVAL.get(year)
        if spring:
            out |= {spring + timedelta(days=d) for d in range(-1, 7)}
        out |= {date(year, 5, d) for d in range(1, 6)}
        out |= {date(year, 10, d) for d in range(1, 8)}
        out.add(date(year, 1, 1))
    return {d for d in out if first <= d <= last}


def _month_start(day: date, back: int = 0) -> date:
    year, month = day.year, day.month - back
    while month < 1:
        year, month = year - 1, month + 12
    return date(year, month, 1)


def _add_months(day: date, months: int) -> date:
    year, month = divmod(day.month - 1 + months, 12)
    first = date(day.year + year, month + 1, 1)
    last_of_month = (_month_start(first + timedelta(days=32)) - timedelta(days=1)).day
    return first.replace(day=min(day.day, last_of_month))


# ---------------------------------------------------------------------------- bulk writing

def _reserve(db: Session, model: type[Any], n: int) -> list[int]:
    """Ids for n new rows, known before writing so numbers (XC…/YY…) can be made with them."""
    if n == 0:
        return []
    table = model.__table__
    connection = db.connection()
    if connection.dialect.name == "sqlite":
        # Inside the build's single write transaction nobody else inserts into these tables.
        top = connection.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()
        return list(range(top + 1, top + n + 1))
    return list(connection.execute(
        text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
        {"t": table.name, "n": n}).scalars())




# ---------------------------------------------------------------------------- the plan

@dataclass
class _Studio:
    id: int
    code: str
    name: str
    host_id: int
    home_id: int
    specialty: str
    specialty_id: int | None
    experts: list[int]  # leader first
    assistants: list[int]
    periods: list[tuple[date, date]] = field(default_factory=list)


@dataclass
class _Planned:
    """A session being planned, with what the activity generator needs to know."""

    row: dict[str, Any]
    specialty: str
    local_dept_id: int | None
    township: bool


class _Outreach:
    def __init__(self, db: Session, *, seed: int, now: datetime, patient_ids: list[int]) -> None:
        self.db = db
        self.rng = random.Random(f"healthrelay-outreach:{seed}")
        self.now = now
        self.today = now.astimezone(LOCAL_TZ).date()
        self.first_day = self.today - timedelta(days=PAST_DAYS)
        self.holidays = _holidays(self.first_day, self.today + timedelta(days=SCHEDULE_AHEAD_DAYS + 7))
        self.residents = set(patient_ids)
        self.busy: dict[int, set[tuple[date, str]]] = defaultdict(set)
        self.planned: list[_Planned] = []
        self.made: dict[str, int] = {}
        self.called_off: tuple[int, date] | None = None  # the one future weekly clinic cancelled
        self._booking_index = 0

    # ------------------------------------------------------------------ reading what earlier stages made

    def load(self) -> None:
        db = self.db
        self.orgs = {code: (oid, kind, area, regional, name) for oid, code, kind, area, regional, name in db.execute(
            select(Organisation.id, Organisation.code, Organisation.kind, Organisation.area_id,
                   Organisation.is_regional_centre, Organisation.name))}
        self.org_id = {code: v[0] for code, v in self.orgs.items()}
        self.org_name = {v[0]: v[4] for v in self.orgs.values()}
        self.people = dict(db.execute(select(Practitioner.code, Practitioner.id)).all())
        self.grade = dict(db.execute(select(Practitioner.id, Practitioner.title_grade)).all())
        self.spec_id = dict(db.execute(select(Specialty.code, Specialty.id)).all())
        self.spec_code = {v: k for k, v in self.spec_id.items()}
        self.dept_by_spec: dict[tuple[int, int], int] = {}
        self.dept_by_code: dict[tuple[int, str], int] = {}
        for did, org_id, code, spec in db.execute(select(Department.id, Department.organisation_id, Department.code,
                                                         Department.specialty_id).order_by(Department.id)):
            self.dept_by_code[(org_id, code)] = did
            if spec is not None:
                self.dept_by_spec.setdefault((org_id, spec), did)
        # Local staff who can learn at a session: by department and by organisation (village doctors count
        # towards their township centre).
        parent = dict(db.execute(select(Organisation.id, Organisation.parent_id)).all())
        kinds = {v[0]: v[1] for v in self.orgs.values()}
        self.staff_dept: dict[int, list[int]] = defaultdict(list)
        self.staff_org: dict[int, list[int]] = defaultdict(list)
        self.doctors_org: dict[int, list[int]] = defaultdict(list)
        for pid, org_id, dept_id in db.execute(select(Post.practitioner_id, Post.organisation_id, Post.department_id)
                                               .where(Post.is_primary.is_(True)).order_by(Post.id)):
            grade = self.grade[pid]
            if grade == TitleGrade.STAFF:
                continue
            if dept_id is not None:
                self.staff_dept[dept_id].append(pid)
            self.staff_org[org_id].append(pid)
            if grade not in (TitleGrade.NURSE, TitleGrade.PHARMACIST, TitleGrade.TECHNICIAN):
                self.doctors_org[org_id].append(pid)
            if kinds.get(org_id) == OrgKind.VILLAGE_CLINIC and parent.get(org_id):
                self.staff_org[parent[org_id]].append(pid)
        # Patients: those registered at a hospital, and those living in a township's villages.
        self.registered: dict[int, list[int]] = defaultdict(list)
        for pid, org_id in db.execute(select(PatientRegistration.patient_id, PatientRegistration.organisation_id)
                                      .order_by(PatientRegistration.patient_id)):
            if pid in self.residents:
                self.registered[org_id].append(pid)
        township_of_village = dict(db.execute(select(Area.id, Area.parent_id).where(Area.level == "village")).all())
        self.by_township_area: dict[int, list[int]] = defaultdict(list)
        self.phone: dict[int, str] = {}
        for pid, area_id, phone in db.execute(select(Patient.id, Patient.area_id, Patient.phone)
                                              .order_by(Patient.id)):
            if pid in self.residents:
                self.phone[pid] = phone or ""
                if area_id in township_of_village:
                    self.by_township_area[township_of_village[area_id]].append(pid)
        self.everyone = sorted(self.residents)
        self.doctor_ids = {x for ids in self.doctors_org.values() for x in ids}
        self.org_area = {v[0]: v[2] for v in self.orgs.values()}
        users = dict(db.execute(select(User.username, User.id)).all())
        self.planner_id = users.get("planner.county") or users.get("admin.county")
        self.expert_user_id = users.get("expert.cardio")
        self.login_patients = set(db.scalars(select(User.patient_id).where(User.role == Role.PATIENT,
                                                                           User.patient_id.is_not(None))))
        studios: list[_Studio] = []
        for team in db.scalars(select(Team).where(Team.kind == TeamKind.EXPERT_STUDIO).order_by(Team.code)):
            members = db.execute(select(TeamMember.practitioner_id, TeamMember.role)
                                 .where(TeamMember.team_id == team.id).order_by(TeamMember.id)).all()
            experts = [p for p, r in members if r == "leader"] + [p for p, r in members if r == "member"]
            studios.append(_Studio(id=team.id, code=team.code, name=team.name, host_id=team.organisation_id,
                                   home_id=team.home_organisation_id or team.organisation_id,
                                   specialty=self.spec_code.get(team.specialty_id or 0, ""),
                                   specialty_id=team.specialty_id, experts=experts,
                                   assistants=[p for p, r in members if r == "assistant"]))
        self.studios = studios
        self.aid_alliance = db.scalar(select(Alliance.id).where(Alliance.code == "DB-QX-AID"))

    def patients_for(self, host_id: int) -> list[int]:
        """Who comes to a session at this host: its township's villagers, or a hospital's registered patients."""
        pool = self.by_township_area.get(self.org_area.get(host_id) or -1) or self.registered.get(host_id) or []
        return pool if len(pool) >= 5 else self.everyone

    # ------------------------------------------------------------------ sessions

    def free(self, person: int, day: date, slot: str) -> bool:
        return (day, slot) not in self.busy[person]

    def plan(self, *, kind: str, title: str, person: int, host_id: int, day: date, slot: str, specialty: str,
             capacity: int = 0, dept_id: int | None = None, studio_id: int | None = None,
             rotation_id: int | None = None, schedule_id: int | None = None, place: str = "",
             township: bool = False) -> bool:
        if not self.free(person, day, slot) or day.weekday() > 4 or day in self.holidays:
            return False
        self.busy[person].add((day, slot))
        start_hhmm, longest = _SLOTS[slot]
        minutes = min(_MINUTES[kind], longest)
        starts = _at(day, start_hhmm)
        created = min(self.now, starts - timedelta(days=self.rng.randint(7, 30)))
        self.planned.append(_Planned(row={
            "kind": kind, "title": title[:200], "place": place[:200], "practitioner_id": person,
            "host_organisation_id": host_id, "department_id": dept_id,
            "specialty_id": self.spec_id.get(specialty), "studio_team_id": studio_id, "rotation_id": rotation_id,
            "schedule_id": schedule_id, "roster_id": None, "starts_at": starts,
            "ends_at": starts + timedelta(minutes=minutes),
            "capacity": capacity if kind == "clinic" else 0, "waitlist_limit": 10 if kind == "clinic" else 0,
            "booked_count": 0, "waitlist_count": 0, "status": "published", "cancel_reason": "",
            "created_by_user_id": self.planner_id, "created_at": created, "published_at": created,
            "cancelled_at": None}, specialty=specialty, local_dept_id=dept_id, township=township))
        return True

    def working_days(self, first: date, last: date) -> list[date]:
        days, day = [], first
        while day <= last:
            if day.weekday() < 5 and day not in self.holidays:
                days.append(day)
            day += timedelta(days=1)
        return days

    # ------------------------------------------------------------------ stages of the plan

    def agreements(self) -> None:
        rng, today = self.rng, self.today
        last_month_end = _month_start(today) - timedelta(days=1)
        rows = []
        for n, s in enumerate(self.studios):
            per_month = rng.randint(2, 4)
            spec = county.SPECIALTY_NAMES.get(s.specialty, "")
            goals = (f"每月下沉 {per_month} 次：专家门诊、教学查房、示范手术；带出一支{spec}骨干团队，"
                     f"三年内开展新技术 2 项以上，常见病、多发病县内就诊率提高。")
            started = today - timedelta(days=rng.randint(380, 1090))
            if s.code == EXPIRED_STUDIO:
                periods = [(started, last_month_end)]
            elif n % 7 == 3:  # a renewal: the first agreement ran two years, the next one follows on
                first_end = started + timedelta(days=729)
                if first_end >= today - timedelta(days=30):
                    first_end = today - timedelta(days=rng.randint(60, 200))
                periods = [(started, first_end),
                           (first_end + timedelta(days=1), date(today.year + rng.randint(1, 2), 12, 31))]
            elif n % 11 == 5:  # a studio set up this year
                periods = [(today - timedelta(days=rng.randint(150, 270)), date(today.year + 2, 12, 31))]
            else:
                month = rng.choice((6, 12))
                periods = [(started, date(today.year + rng.randint(1, 2), month, 30 if month == 6 else 31))]
            s.periods = periods
            for p0, p1 in periods:
                rows.append({"team_id": s.id, "starts_on": p0, "ends_on": p1,
                             "signed_on": p0 - timedelta(days=rng.randint(5, 30)), "sessions_per_month": per_month,
                             "goals": goals, "created_by_user_id": self.planner_id,
                             "created_at": _at(p0 - timedelta(days=5), "10:00")})
        for row, new_id in zip(rows, _reserve(self.db, StudioAgreement, len(rows)), strict=True):
            row["id"] = new_id
        insert_rows(self.db, StudioAgreement, [{"id": r.pop("id"), **r} for r in rows])
        self.made["outreach_agreements"] = len(rows)
        self.made["outreach_studios"] = len(self.studios)

    def aid(self) -> None:
        rng, today, db = self.rng, self.today, self.db
        supporting, supported = self.org_id[county.AID_HOSPITAL], self.org_id[county.COUNTY_HOSPITAL]
        # Nine consecutive three-month batches; the last one started six weeks ago.
        last_start = today - timedelta(days=45)
        starts = [_add_months(last_start, -3 * (AID_BATCHES - k)) for k in range(1, AID_BATCHES + 1)]
        batches = [(k, s0, _add_months(s0, 3) - timedelta(days=1)) for k, s0 in enumerate(starts, start=1)]
        rel_start, rel_end = batches[0][1], date(batches[-1][2].year + 1, 12, 31)
        (rel_id,) = _reserve(db, AidRelationship, 1)
        insert_rows(db, AidRelationship, [{
            "id": rel_id, "code": AID_CODE, "name": f"东滨市中心医院对口帮扶{county.COUNTY_NAME}人民医院",
            "supporting_organisation_id": supporting, "supported_organisation_id": supported,
            "alliance_id": self.aid_alliance, "starts_on": rel_start, "ends_on": rel_end,
            "goals": "东西部协作对口帮扶：每批 3–5 名专家驻县三个月，建强胸痛、卒中、创伤中心，"
                     "填补县内技术空白，带教骨干、接收进修，帮助县医院达到三级医院服务能力。",
            "created_at": _at(rel_start - timedelta(days=20), "09:00")}])
        batch_ids = _reserve(db, AidBatch, len(batches))
        insert_rows(db, AidBatch, [{"id": bid, "relationship_id": rel_id, "number": k, "starts_on": s0, "ends_on": s1,
                             "goals": f"第{k}批：{rng.choice(_BATCH_THEMES)}与学科骨干带教"}
                            for bid, (k, s0, s1) in zip(batch_ids, batches, strict=True)])
        # 35 rotations: four a batch, three in the first; experts drawn from the hospital's departments.
        pool = sorted(code for code in self.people if code.startswith(f"{county.AID_HOSPITAL}-"))
        rotations: list[dict[str, Any]] = []
        meta: list[tuple[str, int]] = []  # (specialty, batch index)
        lead_slots = set(rng.sample(range(AID_ROTATIONS), AID_LEADS))
        index = 0
        aid_neuro = f"{county.AID_HOSPITAL}-NEUROLOGY-1"
        for b, ((k, s0, s1), bid) in enumerate(zip(batches, batch_ids, strict=True)):
            size = 3 if k == 1 else 4
            chosen = rng.sample(pool, size)
            if k == AID_BATCHES and aid_neuro not in chosen:
                chosen[0] = aid_neuro  # expert.aid is on the current batch
            for code in chosen:
                specialty = code.split("-")[2].lower()  # DB-CH-NEUROLOGY-1: the department is the specialty
                posted = county.MCH_HOSPITAL if specialty == "obstetrics_gynecology" else county.COUNTY_HOSPITAL
                posted_id = self.org_id[posted]
                dept_id = self.dept_by_spec.get((posted_id, self.spec_id[specialty]))
                role = "挂职科室主任" if index in lead_slots else "帮扶专家"
                spec = county.SPECIALTY_NAMES.get(specialty, "")
                rotations.append({
                    "batch_id": bid, "practitioner_id": self.people[code], "posted_organisation_id": posted_id,
                    "department_id": dept_id, "starts_on": s0, "ends_on": s1, "role": role,
                    "goals": f"带教{spec}骨干 2 名，规范{spec}常见病诊疗流程，开展新技术 1 项"
                             + ("，任期内完成科室管理制度建设" if role != "帮扶专家" else "")})
                meta.append((specialty, b))
                index += 1
        rotation_ids = _reserve(db, AidRotation, len(rotations))
        insert_rows(db, AidRotation, [{"id": rid, **r} for rid, r in zip(rotation_ids, rotations, strict=True)])
        self.rotations = [(rid, r, spec) for rid, r, (spec, _b) in zip(rotation_ids, rotations, meta, strict=True)]
        self.batches = batches
        self.made["outreach_aid_batches"] = len(batches)
        self.made["outreach_rotations"] = len(rotations)

    def extension_clinics(self) -> None:
        rng, today = self.rng, self.today
        ph = county.COUNTY_HOSPITAL
        last = today + timedelta(days=SCHEDULE_AHEAD_DAYS)
        # Published in two halves (a schedule covers at most a year): until the end of the month six months
        # ago, then from there to two months ahead.
        split = _month_start(today, 5) - timedelta(days=1)
        rows: list[dict[str, Any]] = []
        plans: list[tuple[int, str, int, int, int, str, int, int | None, date, date, set[date]]] = []
        cancelled_once = False
        for dept, township, weekday in _EXTENSION:
            person = self.people[f"{ph}-{dept}-2"]
            host_code = county.centre_code(county.TOWNSHIPS[township - 1])
            host_id = self.org_id[host_code]
            specialty = {"CARD": "cardiology", "ENDO": "endocrinology", "NEUR": "neurology",
                         "GERI": "geriatrics"}[dept]
            spec_name = county.SPECIALTY_NAMES[specialty]
            capacity = rng.choice((20, 24, 25, 30))
            dept_id = self.dept_by_code.get((host_id, "INT"))
            title = f"{spec_name}延伸门诊（县人民医院专家坐诊）"
            for p0, p1 in ((self.first_day, split), (split + timedelta(days=1), last)):
                skips = {d for d in self.holidays if p0 <= d <= p1 and d.weekday() == weekday}
                if not cancelled_once and p1 == last and host_code != SHOWCASE_HOST:
                    # One future date called off (the doctor is at a provincial course), bookers told.
                    off = today + timedelta(days=(weekday - today.weekday()) % 7 + 14)
                    skips.add(off)
                    self.called_off = (person, off)
                    cancelled_once = True
                plans.append((person, title, host_id, weekday, capacity, specialty, len(rows), dept_id, p0, p1,
                              skips))
                rows.append({
                    "practitioner_id": person, "host_organisation_id": host_id, "department_id": dept_id,
                    "specialty_id": self.spec_id[specialty], "studio_team_id": None, "rotation_id": None,
                    "kind": "clinic", "title": title, "place": "门诊楼二楼专家诊室", "weekday": weekday,
                    "start_time": "08:30", "minutes": 180, "capacity": capacity, "waitlist_limit": 10,
                    "starts_on": p0, "ends_on": p1, "skip_dates": sorted(d.isoformat() for d in skips),
                    "created_by_user_id": self.planner_id,
                    "created_at": min(self.now, _at(p0 - timedelta(days=10), "09:30"))})
        ids = _reserve(self.db, OutreachSchedule, len(rows))
        insert_rows(self.db, OutreachSchedule, [{"id": sid, **r} for sid, r in zip(ids, rows, strict=True)])
        sessions = 0
        for person, title, host_id, weekday, capacity, specialty, i, dept_id, p0, p1, skips in plans:
            day = p0 + timedelta(days=(weekday - p0.weekday()) % 7)
            while day <= p1:
                called_off = self.called_off == (person, day)
                if (day not in skips or called_off) and self.plan(
                        kind="clinic", title=title, person=person, host_id=host_id, day=day, slot="am",
                        specialty=specialty, capacity=capacity, dept_id=dept_id, schedule_id=ids[i],
                        place="门诊楼二楼专家诊室", township=True):
                    sessions += 1
                    if called_off:  # published, then called off: the session stays, cancelled
                        row = self.planned[-1].row
                        row["status"], row["cancelled_at"] = "cancelled", self.now - timedelta(hours=3)
                        row["cancel_reason"] = "专家参加省级培训，本次停诊 / the doctor is at a provincial course"
                day += timedelta(days=7)
        self.made["outreach_schedules"] = len(rows)
        self.made["outreach_extension_sessions"] = sessions

    def rotation_sessions(self) -> None:
        """Each rotating expert: a weekly teaching round and, on alternate weeks, an operation or a clinic."""
        rng = self.rng
        last = self.today + timedelta(days=STUDIO_AHEAD_DAYS)
        for rid, r, specialty in self.rotations:
            first, end = max(r["starts_on"], self.first_day), min(r["ends_on"], last)
            if first > end:
                continue
            person, host_id, dept_id = r["practitioner_id"], r["posted_organisation_id"], r["department_id"]
            spec = county.SPECIALTY_NAMES.get(specialty, "")
            round_day, other_day = rng.choice(((1, 3), (2, 4), (0, 2)))
            week = first - timedelta(days=first.weekday())
            n = 0
            while week <= end:
                d1, d2 = week + timedelta(days=round_day), week + timedelta(days=other_day)
                if first <= d1 <= end:
                    self.plan(kind="teaching_round", title=f"{spec}教学查房（东滨帮扶专家）", person=person,
                              host_id=host_id, day=d1, slot="am", specialty=specialty, dept_id=dept_id,
                              rotation_id=rid, place=f"{spec}病区")
                if first <= d2 <= end:
                    if n % 2 == 0 and specialty in _PROCEDURES:
                        kind = "demonstration_operation" if specialty in _SURGICAL or rng.random() < 0.4 \
                            else "guided_procedure"
                        self.plan(kind=kind, title=f"{spec}{_KIND_ZH[kind]}（东滨帮扶专家）", person=person,
                                  host_id=host_id, day=d2, slot="am", specialty=specialty, dept_id=dept_id,
                                  rotation_id=rid, place="手术室" if kind == "demonstration_operation" else "治疗室")
                    else:
                        kind = "clinic" if rng.random() < 0.7 else "lecture"
                        self.plan(kind=kind, title=f"{spec}{_KIND_ZH[kind]}（东滨帮扶专家）", person=person,
                                  host_id=host_id, day=d2, slot="am" if kind == "clinic" else "pm",
                                  specialty=specialty, dept_id=dept_id, rotation_id=rid,
                                  capacity=rng.choice((20, 25, 30)),
                                  place="门诊专家诊室" if kind == "clinic" else "学术报告厅")
                n += 1
                week += timedelta(days=7)

    def studio_sessions(self) -> None:
        """Visits two to four times a month inside the agreement; a morning and often an afternoon session."""
        rng = self.rng
        last = self.today + timedelta(days=STUDIO_AHEAD_DAYS)
        townships = [v[0] for code, v in sorted(self.orgs.items())
                     if v[1] in (OrgKind.TOWNSHIP_CENTRE,) and code.startswith("QX-C")]
        regional = [v[0] for code, v in sorted(self.orgs.items()) if v[3]]
        for s in self.studios:
            spec = county.SPECIALTY_NAMES.get(s.specialty, "")
            dept_id = self.dept_by_spec.get((s.host_id, s.specialty_id or -1))
            surgical = s.specialty in _SURGICAL
            has_procedures = s.specialty in _PROCEDURES
            per_month = rng.randint(2, 4)
            month = _month_start(self.first_day)
            visit = 0
            while month <= last:
                next_month = _month_start(month + timedelta(days=32))
                days = [d for d in self.working_days(max(month, self.first_day), min(next_month - timedelta(days=1),
                                                                                      last))
                        if any(p0 <= d <= p1 for p0, p1 in s.periods)]
                for day in sorted(rng.sample(days, min(per_month, len(days)))):
                    person = s.experts[visit % len(s.experts)] if s.experts else None
                    visit += 1
                    if person is None:
                        continue
                    down = rng.random() < 0.18  # 下沉到乡镇: the visit is at a township centre
                    if down:
                        host_id = rng.choice(regional if rng.random() < 0.7 else townships)
                        local_dept = self.dept_by_code.get((host_id, "INT")) or self.dept_by_code.get((host_id, "GP"))
                        am = "clinic" if rng.random() < 0.7 else "guided_procedure" if has_procedures else "lecture"
                        pm = rng.choice(("lecture", "case_discussion", "teaching_round"))
                        place = "卫生院门诊部"
                    else:
                        host_id, local_dept, place = s.host_id, dept_id, ""
                        roll = rng.random()
                        if roll < 0.45:
                            am = "clinic"
                        elif roll < 0.7:
                            am = "teaching_round"
                        elif roll < 0.85 and has_procedures:
                            am = "demonstration_operation" if surgical else "guided_procedure"
                        else:
                            am = "case_discussion"
                        pm = rng.choice(("teaching_round", "lecture", "case_discussion",
                                         "demonstration_operation" if surgical else "guided_procedure"
                                         if has_procedures else "lecture"))
                    where = "（下沉乡镇）" if down else ""
                    self.plan(kind=am, title=f"{spec}{_KIND_ZH[am]}{where}", person=person, host_id=host_id,
                              day=day, slot="am", specialty=s.specialty, capacity=rng.choice((15, 20, 25, 30)),
                              dept_id=local_dept, studio_id=s.id, place=place or _place(am, spec), township=down)
                    if rng.random() < 0.6:
                        self.plan(kind=pm, title=f"{spec}{_KIND_ZH[pm]}{where}", person=person, host_id=host_id,
                                  day=day, slot="pm", specialty=s.specialty, capacity=rng.choice((20, 25)),
                                  dept_id=local_dept, studio_id=s.id, place=place or _place(pm, spec),
                                  township=down)
                month = next_month

    # ------------------------------------------------------------------ writing sessions, bookings, activity

    def write_sessions(self) -> None:
        rng = self.rng
        planned = sorted(self.planned, key=lambda p: (p.row["starts_at"], p.row["practitioner_id"]))
        ids = _reserve(self.db, OutreachSession, len(planned))
        expert = self.people.get(SHOWCASE_EXPERT)
        past_of_expert = [p for p in planned if p.row["practitioner_id"] == expert and p.row["ends_at"] < self.now
                          and p.row["studio_team_id"] is not None]
        waiting = {id(p) for p in past_of_expert[-UNRECORDED:]}
        for new_id, p in zip(ids, planned, strict=True):
            row = p.row
            row["id"] = new_id
            row["number"] = f"XC{row['starts_at'].astimezone(LOCAL_TZ).date():%Y%m%d}-{new_id:04d}"
            if row["status"] == "cancelled" or row["ends_at"] >= self.now or id(p) in waiting:
                continue
            if row["schedule_id"] is None and rng.random() < 0.02:
                row["status"], row["cancelled_at"] = "cancelled", row["starts_at"] - timedelta(days=2)
                row["cancel_reason"] = rng.choice(("专家临时承担急诊手术，本次改期 / the expert had emergency surgery",
                                                   "暴雨道路中断 / roads closed by a rainstorm"))
            else:
                row["status"] = "done"
        self.sessions = planned
        self.bookings()
        insert_rows(self.db, OutreachSession, [{"id": p.row["id"], "number": p.row["number"],
                                         **{k: v for k, v in p.row.items() if k not in ("id", "number")}}
                                        for p in planned])
        insert_rows(self.db, OutreachBooking, self.booking_rows)
        done = sum(p.row["status"] == "done" for p in planned)
        self.made["outreach_sessions"] = len(planned)
        self.made["outreach_sessions_done"] = done
        self.made["outreach_sessions_upcoming"] = sum(p.row["status"] == "published" and p.row["ends_at"] > self.now
                                                      for p in planned)

    def bookings(self) -> None:
        """Residents' places at clinics: what became of them in the past, who holds them in the future."""
        rng = self.rng
        rows: list[dict[str, Any]] = []
        self.attended: dict[int, list[tuple[int, int]]] = {}  # session id -> [(patient, booking row index)]
        showcase_host = self.org_id[SHOWCASE_HOST]
        full = 0
        for p in self.sessions:
            row = p.row
            if row["kind"] != "clinic" or row["status"] == "cancelled":
                continue
            pool = self.patients_for(row["host_organisation_id"])
            start = row["starts_at"]
            future = start > self.now
            if future:
                pool = [pid for pid in pool if pid not in self.login_patients]  # demo logins can book themselves
                days_ahead = (start - self.now).days
                share = rng.uniform(0.5, 1.0) if days_ahead <= 14 else rng.uniform(0.05, 0.45)
                make_full = (days_ahead <= 21 and row["host_organisation_id"] != showcase_host
                             and rng.random() < 0.15)
                wanted = row["capacity"] if make_full else round(row["capacity"] * share)
                if row["host_organisation_id"] == showcase_host:
                    wanted = min(wanted, row["capacity"] - 5)
            else:
                make_full = False
                wanted = round(row["capacity"] * rng.uniform(0.3, 0.75))
            people = rng.sample(pool, min(len(pool), wanted + (rng.randint(2, 5) if make_full else 0)))
            placed = people[:min(wanted, row["capacity"])]
            waiting = people[len(placed):] if make_full and len(placed) == row["capacity"] else []
            waiting = waiting[:row["waitlist_limit"]]
            if make_full and waiting:
                full += 1
            seen: list[tuple[int, int]] = []
            booked = 0
            for pid in placed:
                made_at = start - timedelta(days=rng.randint(1, 20), hours=rng.randint(0, 10))
                made_at = min(made_at, self.now - timedelta(minutes=rng.randint(5, 600)))
                status, cancelled_at, marked_at, reason = "booked", None, None, ""
                if not future:
                    roll = rng.random()
                    if roll < 0.06:
                        status, cancelled_at, reason = "cancelled", start - timedelta(days=1), "临时有事 / cannot come"
                    elif roll < 0.12:
                        status, marked_at = "no_show", start + timedelta(hours=3)
                    else:
                        status, marked_at = "attended", start + timedelta(minutes=rng.randint(5, 170))
                if status != "cancelled":
                    booked += 1
                rows.append(self._booking(row, pid, status, made_at, cancelled_at, marked_at, reason, future))
                if status == "attended":
                    seen.append((pid, rows[-1]["_index"]))
            for pid in waiting:
                made_at = min(start - timedelta(days=rng.randint(1, 5)), self.now - timedelta(minutes=30))
                rows.append(self._booking(row, pid, "waitlisted", made_at, None, None, "", future))
            row["booked_count"], row["waitlist_count"] = booked, len(waiting)
            self.attended[row["id"]] = seen
        ids = _reserve(self.db, OutreachBooking, len(rows))
        for new_id, r in zip(ids, rows, strict=True):
            r["id"] = new_id
            r["number"] = f"YY{r['created_at'].astimezone(LOCAL_TZ).date():%Y%m%d}-{new_id:04d}"
        self.booking_ids = {r["_index"]: r["id"] for r in rows}
        self.booking_rows = [{"id": r["id"], "number": r["number"],
                              **{k: v for k, v in r.items() if k not in ("id", "number", "_index")}} for r in rows]
        self.made["outreach_bookings"] = len(rows)
        self.made["outreach_full_sessions"] = full

    def _booking(self, session: dict[str, Any], pid: int, status: str, made_at: datetime,
                 cancelled_at: datetime | None, marked_at: datetime | None, reason: str,
                 future: bool) -> dict[str, Any]:
        via = "self" if self.rng.random() < 0.55 else "clinic"
        self._booking_index += 1
        return {"_index": self._booking_index, "session_id": session["id"], "patient_id": pid, "status": status,
                "booked_by_user_id": None, "via": via, "phone": self.phone.get(pid, ""), "note": "",
                "created_at": made_at, "promoted_at": None, "cancelled_at": cancelled_at, "cancel_reason": reason,
                "marked_at": marked_at,
                "reminded_at": None if future or status == "cancelled" else session["starts_at"] - timedelta(hours=24)}

    def activities(self) -> None:
        rng = self.rng
        done = [p for p in self.sessions if p.row["status"] == "done"]
        ids = _reserve(self.db, SessionActivity, len(done))
        activities, patients, procedures, trainees = [], [], [], []
        outcomes, weights = zip(*_OUTCOMES, strict=True)
        for aid, p in zip(ids, done, strict=True):
            row = p.row
            kind, host_id = row["kind"], row["host_organisation_id"]
            pool = self.patients_for(host_id)
            local = self.staff_dept.get(p.local_dept_id or -1) or self.staff_org.get(host_id, [])
            doctors = [x for x in local if x in self.doctor_ids] or local
            diagnoses = _DIAGNOSES.get(p.specialty, ("复诊咨询",))
            seen = list(self.attended.get(row["id"], []))
            taken = {pid for pid, _ in seen}
            walk_ins = {"clinic": rng.randint(0, 5), "teaching_round": rng.randint(3, 8),
                        "case_discussion": rng.randint(1, 3), "demonstration_operation": rng.randint(1, 3),
                        "guided_procedure": rng.randint(1, 3), "lecture": 0}[kind]
            others = [x for x in rng.sample(pool, min(len(pool), walk_ins + len(taken))) if x not in taken][:walk_ins]
            attendees = rng.randint(20, 80) if kind == "lecture" else rng.randint(0, 6)
            for pid, index in seen + [(x, None) for x in others]:
                outcome = rng.choices(outcomes, weights)[0]
                if kind == "teaching_round":
                    outcome = rng.choice(("admitted_locally", "treated_locally"))
                patients.append({"activity_id": aid, "patient_id": pid,
                                 "booking_id": self.booking_ids.get(index) if index is not None else None,
                                 "diagnosis_text": rng.choice(diagnoses), "outcome": outcome, "referral_id": None})
            if kind in ("demonstration_operation", "guided_procedure"):
                names = _PROCEDURES.get(p.specialty, ("专科操作",))
                for pid in [x for x, _ in seen] + others:
                    role = "guided" if kind == "guided_procedure" else rng.choice(("demonstrated", "performed"))
                    procedures.append({"activity_id": aid, "name": rng.choice(names), "role": role,
                                       "patient_id": pid,
                                       "local_practitioner_id": rng.choice(doctors) if doctors else None})
            n_trainees = {"clinic": rng.randint(0, 2), "teaching_round": rng.randint(4, 10),
                          "case_discussion": rng.randint(4, 8), "demonstration_operation": rng.randint(2, 5),
                          "guided_procedure": rng.randint(1, 3), "lecture": rng.randint(10, 30)}[kind]
            audience = self.staff_org.get(host_id, []) if kind == "lecture" else local
            for pid in rng.sample(sorted(set(audience)), min(n_trainees, len(set(audience)))):
                trainees.append({"activity_id": aid, "practitioner_id": pid})
            by_expert = self.expert_user_id if row["practitioner_id"] == self.people.get(SHOWCASE_EXPERT) else None
            activities.append({
                "id": aid, "session_id": row["id"], "attendees": attendees,
                "summary": _summary(kind, len(seen) + len(others), county.SPECIALTY_NAMES.get(p.specialty, "")),
                "recorded_by_user_id": by_expert,
                "recorded_at": row["ends_at"] + timedelta(hours=rng.randint(1, 30))})
        insert_rows(self.db, SessionActivity, activities)
        for model, rows in ((ActivityPatient, patients), (ActivityProcedure, procedures),
                            (ActivityTrainee, trainees)):
            new_ids = _reserve(self.db, model, len(rows))
            insert_rows(self.db, model, [{"id": i, **r} for i, r in zip(new_ids, rows, strict=True)])
        self.done_sessions = done
        self.made["outreach_activities"] = len(activities)
        self.made["outreach_patients_seen"] = len(patients)
        self.made["outreach_referred_up"] = sum(r["outcome"] == "referred_up" for r in patients)
        self.made["outreach_procedures"] = len(procedures)
        self.made["outreach_trainee_places"] = len(trainees)
        self.made["outreach_lectures"] = sum(p.row["kind"] == "lecture" for p in done)
        self.made["outreach_teaching_rounds"] = sum(p.row["kind"] == "teaching_round" for p in done)

    # ------------------------------------------------------------------ techniques, trainees, availability

    def techniques(self) -> None:
        rng = self.rng
        rows: list[dict[str, Any]] = []
        committee = f"{county.COUNTY_NAME}人民医院医疗技术临床应用管理委员会"
        operations = [p for p in self.done_sessions if p.row["kind"] in ("demonstration_operation",
                                                                         "guided_procedure")]

        def add(host_id: int, specialty: str, name: str, description: str, person: int, day: date,
                studio_id: int | None, rotation_id: int | None, fills_gap: bool, session_id: int | None,
                certifier: str) -> None:
            certified = day + timedelta(days=rng.randint(20, 60))
            rows.append({
                "host_organisation_id": host_id,
                "department_id": self.dept_by_spec.get((host_id, self.spec_id.get(specialty, -1))),
                "name": name, "description": description, "fills_gap": fills_gap, "introduced_on": day,
                "introduced_by_practitioner_id": person,
                "certified_on": certified if certified <= self.today else None,
                "certified_by": certifier if certified <= self.today else "", "studio_team_id": studio_id,
                "rotation_id": rotation_id, "session_id": session_id, "recorded_by_user_id": self.planner_id,
                "created_at": _at(min(day + timedelta(days=3), self.today), "16:00")})

        # The last year: studios' operations at the county hospitals, and a few firsts at regional centres.
        studio_ops = [p for p in operations if p.row["studio_team_id"] is not None and not p.township
                      and p.specialty in _TECHNIQUES]
        chosen: dict[str, _Planned] = {}
        for p in rng.sample(studio_ops, len(studio_ops)):
            chosen.setdefault(p.specialty, p)
        for n, p in enumerate(sorted(chosen.values(), key=lambda q: q.row["starts_at"])[:6]):
            name, description = _TECHNIQUES[p.specialty]
            add(p.row["host_organisation_id"], p.specialty, name, description, p.row["practitioner_id"],
                p.row["starts_at"].astimezone(LOCAL_TZ).date(), p.row["studio_team_id"], None, n % 3 == 0,
                p.row["id"], committee)
        regional = [(code, v[0]) for code, v in sorted(self.orgs.items()) if v[3]]
        county_docs = [self.people[f"{county.COUNTY_HOSPITAL}-{d}-2"] for d in ("CARD", "NEUR", "ENDO", "GERI")]
        for i, (specialty, name, description) in enumerate(_TOWNSHIP_TECHNIQUES):
            _code, host_id = regional[i % len(regional)]
            add(host_id, specialty, name, description, rng.choice(county_docs),
                self.today - timedelta(days=rng.randint(40, 300)), None, None, i == 0, None,
                f"{county.COUNTY_NAME}卫生健康局医政医管股")
        # The aid batches, each leaving something behind (older ones before this year's sessions).
        for rid, r, specialty in self.rotations:
            recent = r["starts_on"] >= self.first_day
            if specialty not in _TECHNIQUES or rng.random() < (0.75 if recent else 0.35):
                continue
            name, description = _TECHNIQUES[specialty]
            if any(row["name"] == name and row["host_organisation_id"] == r["posted_organisation_id"]
                   for row in rows):
                name = f"{name}（规范化开展）"
            day = min(r["starts_on"] + timedelta(days=rng.randint(30, 80)), self.today - timedelta(days=3))
            add(r["posted_organisation_id"], specialty, name, description, r["practitioner_id"], day, None, rid,
                rng.random() < 0.35, None, committee)
        ids = _reserve(self.db, NewTechnique, len(rows))
        insert_rows(self.db, NewTechnique, [{"id": i, **r} for i, r in zip(ids, rows, strict=True)])
        self.made["outreach_new_techniques"] = len(rows)
        self.made["outreach_techniques_last_year"] = sum(r["introduced_on"] >= self.first_day for r in rows)
        self.made["outreach_gaps_filled"] = sum(r["fills_gap"] for r in rows)

    def traineeships(self) -> None:
        rng, today = self.rng, self.today
        rows: list[dict[str, Any]] = []
        ph, tcm = self.org_id[county.COUNTY_HOSPITAL], self.org_id[county.TCM_HOSPITAL]
        # 导师制: each studio's leader mentors its local assistants.
        for s in self.studios:
            if not s.experts or not s.periods:
                continue
            spec = county.SPECIALTY_NAMES.get(s.specialty, "")
            for trainee in s.assistants[:rng.randint(1, 2)]:
                start = max(s.periods[0][0], today - timedelta(days=rng.randint(120, 700)))
                end = min(s.periods[-1][1], start + timedelta(days=730))
                goals = [f"独立完成{spec}常见病规范诊疗", f"掌握{_first(s.specialty)}",
                         "主持科室疑难病例讨论并发表病例报告 1 篇"]
                rows.append(self._traineeship("mentorship", trainee, s.experts[0], s.host_id, s.host_id, s.id, None,
                                              start, end, goals))
        # 进修: county doctors at the provincial hospitals and at the aid hospital.
        places = [(county.PROVINCIAL_GENERAL, None), (county.PROVINCIAL_UNIVERSITY, None),
                  (county.AID_HOSPITAL, None), (county.PROVINCIAL_TCM, tcm)]
        used: set[int] = set()
        for n in range(24):
            at_code, home_only = places[n % len(places)]
            home = home_only or (ph if n % 5 else self.org_id[county.centre_code(county.TOWNSHIPS[2 + n % 6])])
            candidates = [x for x in self.doctors_org.get(home, []) if x not in used and self.grade[x] in (
                TitleGrade.ATTENDING, TitleGrade.RESIDENT)]
            if not candidates:
                continue
            trainee = rng.choice(candidates)
            used.add(trainee)
            start = today - timedelta(days=rng.randint(30, 700))
            end = start + timedelta(days=rng.choice((91, 182, 182, 365)))
            at_id = self.org_id[at_code]
            rotation = None
            mentor = rng.choice(self.doctors_org.get(at_id) or [None])  # type: ignore[list-item]
            if at_code == county.AID_HOSPITAL:
                match = [(rid, r) for rid, r, _ in self.rotations if r["starts_on"] <= start <= r["ends_on"]]
                if match:
                    rotation, r = rng.choice(match)
                    mentor = r["practitioner_id"]
            rows.append(self._traineeship("further_training", trainee, mentor, home, at_id, None, rotation, start,
                                          end, ["系统学习本专科常见病、多发病诊疗规范", "掌握 1–2 项适宜技术并回院开展",
                                                "完成进修结业考核"]))
        ids = _reserve(self.db, Traineeship, len(rows))
        progress: list[dict[str, Any]] = []
        for tid, r in zip(ids, rows, strict=True):
            r["id"] = tid
            elapsed = (min(today, r["ends_on"]) - r["starts_on"]).days / max(1, (r["ends_on"] - r["starts_on"]).days)
            for goal in range(len(r["goals"])):
                notes = rng.randint(1, 3)
                for k in range(1, notes + 1):
                    on = r["starts_on"] + timedelta(days=int((min(today, r["ends_on"]) - r["starts_on"]).days
                                                             * k / (notes + 0.5)))
                    percent = min(100, int(100 * elapsed * k / notes * rng.uniform(0.7, 1.1)))
                    progress.append({"traineeship_id": tid, "goal_index": goal, "percent": percent,
                                     "note": rng.choice(("按计划推进", "已能在指导下独立完成", "考核通过",
                                                         "病例积累中，下月复评")),
                                     "recorded_on": on, "recorded_by_user_id": self.planner_id})
        insert_rows(self.db, Traineeship, [{"id": r.pop("id"), **r} for r in rows])
        pids = _reserve(self.db, TraineeshipProgress, len(progress))
        insert_rows(self.db, TraineeshipProgress, [{"id": i, **r} for i, r in zip(pids, progress, strict=True)])
        self.made["outreach_traineeships"] = len(rows)
        self.made["outreach_further_training"] = sum(r["kind"] == "further_training" for r in rows)
        self.made["outreach_mentorships"] = sum(r["kind"] == "mentorship" for r in rows)

    def _traineeship(self, kind: str, trainee: int, mentor: int | None, home: int, at: int, studio: int | None,
                     rotation: int | None, start: date, end: date, goals: list[str]) -> dict[str, Any]:
        status = "completed" if end < self.today else "active"
        return {"kind": kind, "trainee_practitioner_id": trainee, "mentor_practitioner_id": mentor,
                "home_organisation_id": home, "at_organisation_id": at, "studio_team_id": studio,
                "rotation_id": rotation, "starts_on": start, "ends_on": end, "goals": goals, "status": status,
                "created_by_user_id": self.planner_id, "created_at": _at(min(start, self.today), "09:00")}

    def availability(self) -> None:
        rng = self.rng
        rows: list[dict[str, Any]] = []
        seen: set[int] = set()
        next_month = _month_start(self.today + timedelta(days=32))
        for s in self.studios:
            for person in s.experts:
                if person in seen:
                    continue
                seen.add(person)
                off = sorted({(next_month + timedelta(days=rng.randint(0, 27))).isoformat()
                              for _ in range(rng.randint(0, 2))})
                rows.append({"practitioner_id": person, "studio_team_id": s.id, "specialty_id": s.specialty_id,
                             "base_organisation_id": s.host_id, "weekdays": sorted(rng.sample(range(5),
                                                                                               rng.randint(2, 4))),
                             "unavailable_dates": off, "max_travel_minutes": rng.choice((60, 90, 120, 150, 180)),
                             "max_sessions_per_month": rng.randint(2, 6),
                             "session_capacity": rng.choice((15, 20, 25, 30)), "updated_at": self.now})
        ph = county.COUNTY_HOSPITAL
        for dept, specialty in (("CARD", "cardiology"), ("ENDO", "endocrinology"), ("NEUR", "neurology"),
                                ("GERI", "geriatrics")):
            person = self.people[f"{ph}-{dept}-2"]
            if person in seen:
                continue
            seen.add(person)
            weekly = {w for d, _t, w in _EXTENSION if d == dept}
            rows.append({"practitioner_id": person, "studio_team_id": None, "specialty_id": self.spec_id[specialty],
                         "base_organisation_id": self.org_id[ph],
                         "weekdays": sorted(set(range(5)) - weekly) or [0], "unavailable_dates": [],
                         "max_travel_minutes": rng.choice((60, 90, 120)), "max_sessions_per_month": rng.randint(2, 4),
                         "session_capacity": rng.choice((20, 25, 30)), "updated_at": self.now})
        ids = _reserve(self.db, ExpertAvailability, len(rows))
        insert_rows(self.db, ExpertAvailability, [{"id": i, **r} for i, r in zip(ids, rows, strict=True)])
        self.made["outreach_availability"] = len(rows)

    def build(self) -> dict[str, int]:
        self.load()
        if not self.studios:
            return self.made
        self.agreements()
        self.aid()
        self.extension_clinics()  # fixed weekdays first; rotations and studio visits fit around them
        self.rotation_sessions()
        self.studio_sessions()
        self.write_sessions()
        self.activities()
        self.techniques()
        self.traineeships()
        self.availability()
        return self.made


def _place(kind: str, spec: str) -> str:
    return {"clinic": "门诊楼专家诊室", "teaching_round": f"{spec}病区", "demonstration_operation": "手术室",
            "guided_procedure": "介入/内镜治疗室", "case_discussion": f"{spec}示教室", "lecture": "学术报告厅"}[kind]


def _first(specialty: str) -> str:
    names = _PROCEDURES.get(specialty)
    return names[0] if names else "本专科适宜技术"


def _summary(kind: str, patients: int, spec: str) -> str:
    return {"clinic": f"接诊 {patients} 人，常见病县内/镇内处理，少数建议上转。",
            "teaching_round": f"查房 {patients} 例，逐例分析诊疗方案，规范{spec}病历书写。",
            "demonstration_operation": f"示范手术 {patients} 台，术中讲解关键步骤。",
            "guided_procedure": f"指导本院医生完成操作 {patients} 例。",
            "case_discussion": f"讨论疑难病例 {patients} 例，明确下一步诊疗。",
            "lecture": f"{spec}诊疗新进展专题讲座。"}[kind]


def build_demo_outreach(db: Session, *, seed: int, now: datetime, patient_ids: list[int]) -> dict[str, int]:
    """Write the demo's outreach year; returns counts for the build summary. `patient_ids`: real residents
    (no planted duplicates), the people who book and are seen."""
    counts = _Outreach(db, seed=seed, now=now, patient_ids=patient_ids).build()
    # The demo county sends few patients up (about 18 a month) and its weekly clinics already take most of them:
    # no (township, specialty) is left with 3 a month, so the roster may propose sessions for fewer.
    db.execute(update(OutreachSetting).where(OutreachSetting.key == "roster_min_patients").values(
        value=1.0, note="演示县上转量小，每场至少留住 1 人 / the demo county's demand is thin: 1"))
    return counts
