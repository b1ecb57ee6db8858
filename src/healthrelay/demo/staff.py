"""The demo county's people at work: practitioners, their posts, and the teams they form.

Which posts and teams exist is fixed (so a login always points at the same post); the people filling them
(names, sex, years of practice, licence numbers) come from the seed. Practitioner codes are structural,
`<organisation>-<department>-<n>` (e.g. QX-C03-GP-1, the leader of 石门镇's family-doctor team 1), and
nurses `<organisation>-<department>-N<n>`, so account definitions can name them without a database.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from healthrelay.demo import county
from healthrelay.demo.county import OrgDef, TownshipDef
from healthrelay.demo.names import full_name
from healthrelay.directory.models import OrgKind, OrgLevel, TeamKind, TitleGrade

G = TitleGrade


@dataclass
class PostDef:
    org_code: str
    dept_code: str | None
    position: str
    is_primary: bool = True


@dataclass
class PractitionerDef:
    code: str
    name: str
    sex: str
    grade: TitleGrade
    years: int
    licence: str
    phone: str
    specialties: list[str]
    posts: list[PostDef] = field(default_factory=list)


@dataclass
class TeamDef:
    code: str
    name: str
    kind: TeamKind
    org_code: str
    specialty: str | None = None
    home_org_code: str | None = None
    area_codes: list[str] = field(default_factory=list)
    members: list[tuple[str, str]] = field(default_factory=list)  # (practitioner code, role)


@dataclass
class StaffPlan:
    practitioners: list[PractitionerDef]
    department_heads: dict[tuple[str, str], str]  # (org code, dept code) -> practitioner code
    teams: list[TeamDef]

    def by_code(self) -> dict[str, PractitionerDef]:
        return {p.code: p for p in self.practitioners}


_YEARS = {G.CHIEF: (20, 36), G.ASSOCIATE_CHIEF: (12, 26), G.ATTENDING: (6, 16), G.RESIDENT: (1, 6),
          G.ASSISTANT: (1, 15), G.VILLAGE_DOCTOR: (4, 40), G.NURSE: (1, 26), G.PHARMACIST: (2, 28),
          G.TECHNICIAN: (2, 28), G.STAFF: (1, 22)}
_AGE_AT_START = {G.CHIEF: 28, G.ASSOCIATE_CHIEF: 28, G.ATTENDING: 26, G.RESIDENT: 25, G.ASSISTANT: 22,
                 G.VILLAGE_DOCTOR: 20, G.NURSE: 21, G.PHARMACIST: 23, G.TECHNICIAN: 22, G.STAFF: 23}
_POSITION = {G.CHIEF: "主任医师", G.ASSOCIATE_CHIEF: "副主任医师", G.ATTENDING: "主治医师", G.RESIDENT: "住院医师",
             G.ASSISTANT: "执业助理医师", G.VILLAGE_DOCTOR: "乡村医生", G.NURSE: "护士", G.PHARMACIST: "药师",
             G.TECHNICIAN: "技师", G.STAFF: "工作人员"}


class _Staffer:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"healthrelay-staff:{seed}")
        self.practitioners: list[PractitionerDef] = []
        self.by_code: dict[str, PractitionerDef] = {}
        self.heads: dict[tuple[str, str], str] = {}
        self.licences: set[str] = set()

    def person(self, code: str, grade: TitleGrade, specialty: str, org: OrgDef, dept: str | None,
               position: str = "", sex: str | None = None) -> PractitionerDef:
        rng = self.rng
        if sex is None:
            female_share = {G.NURSE: 0.95, G.VILLAGE_DOCTOR: 0.2, G.STAFF: 0.5}.get(grade, 0.42)
            sex = "F" if rng.random() < female_share else "M"
        lo, hi = _YEARS[grade]
        years = rng.randint(lo, hi)
        birth_year = 2026 - _AGE_AT_START[grade] - years - rng.randint(0, 4)
        name = full_name(rng, sex=sex, birth_year=birth_year)
        licence = ""
        if grade not in (G.STAFF,):
            while not licence or licence in self.licences:
                licence = f"{rng.choice((1, 2))}{rng.randint(10, 43)}{county.COUNTY_AREA_CODE[:4]}" \
                          f"{2026 - years}{rng.randrange(10**5):05d}"
            self.licences.add(licence)
        phone = rng.choice(("139", "138", "136", "158", "187", "189")) + f"{rng.randrange(10**8):08d}"
        specialties = [specialty]
        if grade in (G.NURSE,):
            specialties = ["nursing"]
        post = PostDef(org.code, dept, position or _POSITION[grade])
        p = PractitionerDef(code=code, name=name, sex=sex, grade=grade, years=years, licence=licence,
                            phone=phone, specialties=specialties, posts=[post])
        self.practitioners.append(p)
        self.by_code[code] = p
        return p

    def department(self, org: OrgDef, dept: tuple[str, str, str], doctors: list[TitleGrade], nurses: int = 0,
                   others: tuple[tuple[TitleGrade, int], ...] = ()) -> list[PractitionerDef]:
        code, name, specialty = dept
        staff: list[PractitionerDef] = []
        for i, grade in enumerate(doctors, start=1):
            position = f"{name}主任" if i == 1 and len(doctors) > 1 else ""
            staff.append(self.person(f"{org.code}-{code}-{i}", grade, specialty, org, code, position))
        n = len(doctors)
        for grade, count in others:
            for _ in range(count):
                n += 1
                staff.append(self.person(f"{org.code}-{code}-{n}", grade, specialty, org, code))
        for i in range(1, nurses + 1):
            self.person(f"{org.code}-{code}-N{i}", G.NURSE, specialty, org, code)
        if staff:
            self.heads[(org.code, code)] = staff[0].code
        return staff

    def grades(self, n: int, table: tuple[tuple[TitleGrade, float], ...], head: tuple[TitleGrade, ...] = ()
               ) -> list[TitleGrade]:
        rng = self.rng
        out = [rng.choice(head)] if head else []
        grades = [g for g, _ in table]
        weights = [w for _, w in table]
        out += rng.choices(grades, weights=weights, k=n - len(out))
        return out


_COUNTY_GRADES = ((G.ASSOCIATE_CHIEF, 0.25), (G.ATTENDING, 0.4), (G.RESIDENT, 0.3), (G.ASSISTANT, 0.05))
_TOWNSHIP_GRADES = ((G.ATTENDING, 0.25), (G.RESIDENT, 0.35), (G.ASSISTANT, 0.4))
_EXPERT_GRADES = ((G.CHIEF, 0.5), (G.ASSOCIATE_CHIEF, 0.5))
_TECH_DEPTS = {"RADI": (6, 0), "US": (4, 0), "ECG": (4, 0), "LAB": (2, 4), "PATH": (3, 1)}


def teams_for(t: TownshipDef) -> int:
    """Family-doctor teams at a centre: each serves one or two villages (about 2 teams per 3 villages)."""
    return max(1, math.ceil(t.villages * 2 / 3))


def plan_staff(seed: int) -> StaffPlan:
    s = _Staffer(seed)
    orgs = county.organisations()
    by_code = county.organisations_by_code()
    geo = county.geography()
    for org in orgs:
        if org.level in (OrgLevel.PROVINCIAL, OrgLevel.TERTIARY):
            for dept in org.departments:
                # Provincial and big-city hospitals: experts only (主任/副主任医师), head first.
                s.department(org, dept, s.grades(4, _EXPERT_GRADES, head=(G.CHIEF,)))
        elif org.kind in (OrgKind.GENERAL_HOSPITAL, OrgKind.TCM_HOSPITAL, OrgKind.MATERNAL_CHILD):
            big = org.code == county.COUNTY_HOSPITAL
            for dept in org.departments:
                code = dept[0]
                if code == "PHAR":
                    s.department(org, dept, [], others=((G.PHARMACIST, 6 if big else 3),))
                elif code in _TECH_DEPTS:
                    doctors, techs = _TECH_DEPTS[code]
                    doctors = doctors if big else max(1, doctors // 2)
                    s.department(org, dept, s.grades(doctors, _COUNTY_GRADES, head=(G.CHIEF, G.ASSOCIATE_CHIEF)),
                                 others=((G.TECHNICIAN, techs if big else 1),))
                else:
                    n = s.rng.randint(4, 6) if big else s.rng.randint(3, 4)
                    s.department(org, dept, s.grades(n, _COUNTY_GRADES, head=(G.CHIEF, G.ASSOCIATE_CHIEF)),
                                 nurses=s.rng.randint(2, 3) if big else 2)
        elif org.kind == OrgKind.EMERGENCY_STATION:
            s.department(org, org.departments[0], [], others=((G.STAFF, 4),))  # dispatchers
            s.department(org, org.departments[1], s.grades(3, ((G.ATTENDING, 0.5), (G.RESIDENT, 0.5))), nurses=2)
        elif org.kind == OrgKind.EMERGENCY_SUBSTATION:
            s.department(org, org.departments[0], s.grades(2, ((G.ATTENDING, 0.3), (G.RESIDENT, 0.4),
                                                                (G.ASSISTANT, 0.3))), nurses=1)
        elif org.kind == OrgKind.HEALTH_BUREAU:
            s.department(org, org.departments[0], [], others=((G.STAFF, 3),))
        elif org.kind in (OrgKind.TOWNSHIP_CENTRE, OrgKind.COMMUNITY_CENTRE):
            t = county.TOWNSHIPS[org.township - 1]  # type: ignore[operator]
            n_teams = teams_for(t)
            for dept in org.departments:
                code = dept[0]
                if code == "GP":
                    s.department(org, dept, s.grades(n_teams, _TOWNSHIP_GRADES), nurses=max(2, n_teams // 2 + 1))
                elif code == "PHAR":
                    s.department(org, dept, [], others=((G.PHARMACIST, 1),))
                elif code == "TECH":
                    s.department(org, dept, [], others=((G.TECHNICIAN, 2 if t.regional else 1),))
                elif code in ("INT", "SURG"):
                    s.department(org, dept, s.grades(2, _TOWNSHIP_GRADES, head=(G.ATTENDING,)), nurses=1)
                else:
                    s.department(org, dept, s.grades(1, _TOWNSHIP_GRADES))
        elif org.kind == OrgKind.VILLAGE_CLINIC:
            centre = by_code[org.parent_code]  # type: ignore[index]
            urban = centre.kind == OrgKind.COMMUNITY_CENTRE
            n = 2 if urban or s.rng.random() < 0.3 else 1
            for i in range(1, n + 1):
                grade = s.rng.choice((G.ASSISTANT, G.RESIDENT)) if urban else G.VILLAGE_DOCTOR
                s.person(f"{org.code}-{i}", grade, "general_practice", org, None,
                         "站长" if urban and i == 1 else ("村医" if not urban else ""))
    _second_posts(s)
    teams = _studios(s) + _family_teams(s, geo) + _mobile_teams(s, geo)
    return StaffPlan(practitioners=s.practitioners, department_heads=s.heads, teams=teams)


def _second_posts(s: _Staffer) -> None:
    """多点执业: county specialists who also sit weekly at a regional centre."""
    for org in county.organisations():
        if not org.is_regional_centre:
            continue
        for dept in ("CARD", "ENDO") if org.township and org.township % 2 else ("NEUR", "GERI"):
            p = s.by_code[f"{county.COUNTY_HOSPITAL}-{dept}-2"]
            p.posts.append(PostDef(org.code, "INT", "下沉坐诊专家", is_primary=False))


def _studios(s: _Staffer) -> list[TeamDef]:
    by_code = county.organisations_by_code()
    cursor: dict[tuple[str, str], int] = {}
    teams: list[TeamDef] = []
    for n, (specialty, host_code, home_code) in enumerate(county.STUDIOS, start=1):
        host, home = by_code[host_code], by_code[home_code]
        home_dept = county.department_for(home, specialty)
        host_dept = county.department_for(host, specialty)
        assert home_dept and host_dept, (specialty, host_code, home_code)
        start = cursor.get((home_code, specialty), 1)
        cursor[(home_code, specialty)] = start + 2
        leader = s.by_code[f"{home_code}-{home_dept}-{start}"]
        expert = s.by_code[f"{home_code}-{home_dept}-{start + 1}"]
        for p, position in ((leader, "专家工作室首席专家"), (expert, "专家工作室专家")):
            p.posts.append(PostDef(host_code, host_dept, position, is_primary=False))
        local = [s.by_code[f"{host_code}-{host_dept}-{i}"] for i in (1, 2)]
        spec_name = county.SPECIALTY_NAMES[specialty]
        teams.append(TeamDef(
            code=f"QX-STUDIO-{n:02d}", name=f"{leader.name}{spec_name}专家工作室", kind=TeamKind.EXPERT_STUDIO,
            org_code=host_code, specialty=specialty, home_org_code=home_code,
            members=[(leader.code, "leader"), (expert.code, "member")] + [(p.code, "assistant") for p in local]))
    return teams


def _family_teams(s: _Staffer, geo: county.Geography) -> list[TeamDef]:
    teams: list[TeamDef] = []
    for t in county.TOWNSHIPS:
        centre = county.centre_code(t)
        villages = list(geo.villages_by_township[t.number])
        n_teams = teams_for(t)
        doubles = len(villages) - n_teams  # teams that serve two villages
        nurses = [p.code for p in s.practitioners if p.code.startswith(f"{centre}-GP-N")]
        public_health = f"{centre}-PUBH-1"
        cursor = 0
        for k in range(1, n_teams + 1):
            take = 2 if k <= doubles else 1
            served = villages[cursor:cursor + take]
            cursor += take
            leader = s.by_code[f"{centre}-GP-{k}"]
            members = [(leader.code, "leader"), (nurses[(k - 1) % len(nurses)], "member"), (public_health, "member")]
            for v in served:
                members += [(p.code, "member") for p in s.practitioners if p.code.startswith(f"{v.clinic_code}-")]
            teams.append(TeamDef(
                code=f"{centre}-FDT{k:02d}", name=f"{t.name}家庭医生{k}队（{leader.name}）",
                kind=TeamKind.FAMILY_DOCTOR, org_code=centre, specialty="general_practice",
                area_codes=[v.code for v in served], members=members))
        assert cursor == len(villages)
    return teams


def _mobile_teams(s: _Staffer, geo: county.Geography) -> list[TeamDef]:
    ph = county.COUNTY_HOSPITAL
    remote = [v.code for n in (9, 15, 19) for v in geo.villages_by_township[n]]
    far = [v.code for n in (20, 22) for v in geo.villages_by_township[n]]
    prov = county.PROVINCIAL_GENERAL
    return [
        TeamDef(code="QX-MOBILE-1", name=f"{county.COUNTY_NAME}人民医院山区巡回医疗队", kind=TeamKind.MOBILE_MEDICAL,
                org_code=ph, specialty="general_practice", area_codes=remote,
                members=[(f"{ph}-GSUR-3", "leader"), (f"{ph}-CARD-3", "member"), (f"{ph}-PEDS-3", "member"),
                         (f"{ph}-OPHT-2", "member"), (f"{ph}-US-2", "member"), (f"{ph}-CARD-N1", "member")]),
        TeamDef(code="QX-MOBILE-2", name=f"{county.PROVINCE}人民医院乡村巡回医疗队", kind=TeamKind.MOBILE_MEDICAL,
                org_code=ph, home_org_code=prov, specialty="general_practice", area_codes=far,
                members=[(f"{prov}-CARDIOLOGY-4", "leader"), (f"{prov}-ENDOCRINOLOGY-4", "member"),
                         (f"{prov}-ORTHOPEDICS-4", "member"), (f"{ph}-GERI-3", "assistant")]),
    ]
