"""Demo logins: one per role and place worth trying, defined without a database.

Every account shares DEMO_PASSWORD. Staff accounts that treat patients point at a practitioner code
from `healthrelay.demo.staff` (structural, the same for every seed), so the user acts through that
post and its team panels give care relationships. Patient accounts are linked at build time to a
resident of the named village (which resident depends on the seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from healthrelay.accounts.models import Role
from healthrelay.demo import county

DEMO_PASSWORD = "Demo-2026!"


@dataclass(frozen=True)
class LoginDef:
    username: str
    role: Role
    org_code: str | None
    description: str  # "中文 / English": who this is and what to try with it
    practitioner_code: str | None = None
    patient_village_code: str | None = None  # patients: the village whose resident the login belongs to


def _village(township: int, index: int = 1) -> county.VillageSite:
    return county.geography().villages_by_township[township][index - 1]


@lru_cache(maxsize=1)
def logins() -> tuple[LoginDef, ...]:
    ph, tcm, mch = county.COUNTY_HOSPITAL, county.TCM_HOSPITAL, county.MCH_HOSPITAL
    shimen, baisha, qingshan, chengdong, taoyuan = (county.centre_code(county.TOWNSHIPS[n - 1])
                                                    for n in (3, 4, 9, 1, 10))
    v_shimen, v_taoyuan, v_baisha = _village(3), _village(10), _village(4)
    vdoc1 = "vdoc." + county.slug_of(v_shimen.name.removesuffix("村"))
    vdoc2 = "vdoc." + county.slug_of(v_taoyuan.name.removesuffix("村"))
    return (
        LoginDef("admin.alliance", Role.ALLIANCE_ADMIN, ph, "医共体管理中心管理员 / alliance administrator"),
        LoginDef("admin.county", Role.ORG_ADMIN, ph, "县人民医院机构管理员 / county hospital administrator"),
        LoginDef("admin.shimen", Role.ORG_ADMIN, shimen, "石门镇中心卫生院机构管理员 / township administrator"),
        LoginDef("doc.shimen", Role.CLINICIAN, shimen,
                 "石门镇中心卫生院全科医生，家庭医生1队队长 / township GP, leader of family-doctor team 1",
                 practitioner_code=f"{shimen}-GP-1"),
        LoginDef("doc.baisha", Role.CLINICIAN, baisha,
                 "白沙镇中心卫生院全科医生，家庭医生1队队长 / township GP at another township",
                 practitioner_code=f"{baisha}-GP-1"),
        LoginDef("doc.qingshan", Role.CLINICIAN, qingshan, "青山乡卫生院全科医生 / GP at a small township centre",
                 practitioner_code=f"{qingshan}-GP-1"),
        LoginDef("doc.chengdong", Role.CLINICIAN, chengdong,
                 "城东街道社区卫生服务中心全科医生 / community-centre GP in town",
                 practitioner_code=f"{chengdong}-GP-1"),
        LoginDef(vdoc1, Role.CLINICIAN, v_shimen.clinic_code,
                 f"{v_shimen.name}卫生室乡村医生（慢病工作单上有一位逾期复查的高血压患者）/ village doctor "
                 "(the chronic worklist has a hypertension review overdue)",
                 practitioner_code=f"{v_shimen.clinic_code}-1"),
        LoginDef(vdoc2, Role.CLINICIAN, v_taoyuan.clinic_code,
                 f"{v_taoyuan.name}卫生室乡村医生 / village doctor in another township",
                 practitioner_code=f"{v_taoyuan.clinic_code}-1"),
        LoginDef("doc.cardio", Role.CLINICIAN, ph, "县人民医院心血管内科主任 / county cardiologist (chest pain)",
                 practitioner_code=f"{ph}-CARD-1"),
        LoginDef("doc.neuro", Role.CLINICIAN, ph, "县人民医院神经内科主任 / county neurologist (stroke)",
                 practitioner_code=f"{ph}-NEUR-1"),
        LoginDef("doc.emergency", Role.CLINICIAN, ph, "县人民医院急诊科主任 / county emergency physician",
                 practitioner_code=f"{ph}-EMER-1"),
        LoginDef("doc.tcm", Role.CLINICIAN, tcm, "县中医医院中医内科主任 / county TCM physician",
                 practitioner_code=f"{tcm}-TCMI-1"),
        LoginDef("doc.mch", Role.CLINICIAN, mch, "县妇幼保健院儿科主任 / county paediatrician",
                 practitioner_code=f"{mch}-PEDS-1"),
        LoginDef("expert.cardio", Role.CLINICIAN, county.PROVINCIAL_GENERAL,
                 "省人民医院心内科专家，县医院专家工作室首席 / provincial cardiologist leading a county studio",
                 practitioner_code=f"{county.PROVINCIAL_GENERAL}-CARDIOLOGY-1"),
        LoginDef("planner.county", Role.ORG_ADMIN, ph,
                 "县人民医院医务科（安排专家下沉、延伸门诊和排班） / county hospital medical-affairs office "
                 "(plans outreach, weekly clinics and the roster)"),
        LoginDef("doc.outreach", Role.CLINICIAN, ph,
                 "县人民医院心血管内科医生，每周二到石门镇中心卫生院坐诊（延伸门诊） / county cardiologist with a "
                 "weekly extension clinic at Shimen",
                 practitioner_code=f"{ph}-CARD-2"),
        LoginDef("expert.aid", Role.CLINICIAN, county.AID_HOSPITAL,
                 "东滨市中心医院帮扶专家（神经内科） / paired-aid neurologist",
                 practitioner_code=f"{county.AID_HOSPITAL}-NEUROLOGY-1"),
        LoginDef("reader.imaging", Role.REMOTE_READER, ph, "县医学影像中心阅片医生 / county imaging centre reader",
                 practitioner_code=f"{ph}-RADI-1"),
        LoginDef("reader.trainee", Role.REMOTE_READER, ph,
                 "县医学影像中心住院医师（报告需上级医师审核） / trainee radiologist (reports need a co-signature)",
                 practitioner_code=f"{ph}-RADI-5"),
        LoginDef("reader.ecg", Role.REMOTE_READER, ph, "县心电诊断中心医生 / county ECG centre reader",
                 practitioner_code=f"{ph}-ECG-1"),
        LoginDef("reader.pathology", Role.REMOTE_READER, ph, "县病理诊断中心医生 / county pathology reader",
                 practitioner_code=f"{ph}-PATH-1"),
        LoginDef("reader.province", Role.REMOTE_READER, county.PROVINCIAL_GENERAL,
                 "省人民医院影像科专家 / provincial radiologist (second opinions)",
                 practitioner_code=f"{county.PROVINCIAL_GENERAL}-RADIOLOGY-1"),
        LoginDef("dispatch.city", Role.DISPATCHER, county.EMS_STATIONS[0],
                 "城区急救站调度员 / dispatcher, city station",
                 practitioner_code=f"{county.EMS_STATIONS[0]}-DISP-1"),
        LoginDef("dispatch.tcm", Role.DISPATCHER, county.EMS_STATIONS[1],
                 "中医院急救站调度员 / dispatcher, second station",
                 practitioner_code=f"{county.EMS_STATIONS[1]}-DISP-1"),
        # Ambulance crews sign in as dispatchers of their station: the same board, and the crew page
        # (/emergency/ambulances/{id}/crew) on the phone.
        LoginDef("crew.city1", Role.DISPATCHER, county.EMS_STATIONS[0],
                 "城区急救站出车医生（手机上的出车页面） / ambulance crew doctor, city station (crew page)",
                 practitioner_code=f"{county.EMS_STATIONS[0]}-PREH-1"),
        LoginDef("crew.shimen", Role.DISPATCHER, "QX-EMS-S1",
                 "石门镇急救分站出车医生 / ambulance crew doctor, Shimen sub-station",
                 practitioner_code="QX-EMS-S1-PREH-1"),
        LoginDef("pharm.county", Role.PHARMACIST, ph, "县人民医院药剂科药师 / county hospital pharmacist",
                 practitioner_code=f"{ph}-PHAR-1"),
        LoginDef("pharm.shimen", Role.PHARMACIST, shimen, "石门镇中心卫生院药师 / township pharmacist",
                 practitioner_code=f"{shimen}-PHAR-1"),
        LoginDef("bureau.health", Role.HEALTH_BUREAU, county.HEALTH_BUREAU,
                 "县卫健局（只看汇总，不见姓名） / county health bureau (aggregates only)"),
        LoginDef("patient.shimen", Role.PATIENT, None, f"{v_shimen.name}居民 / resident of {v_shimen.name}",
                 patient_village_code=v_shimen.code),
        LoginDef("patient.baisha", Role.PATIENT, None, f"{v_baisha.name}居民 / resident of {v_baisha.name}",
                 patient_village_code=v_baisha.code),
        LoginDef("admin.taoyuan", Role.ORG_ADMIN, taoyuan, "桃源乡卫生院机构管理员 / administrator of a small centre"),
    )
