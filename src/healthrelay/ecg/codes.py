"""The structured ECG report's vocabulary: one code per statement, grouped the way a cardiologist writes.

The automatic read suggests codes from this list and the reader confirms or corrects them; a code that is
`critical` makes the signed report a critical result (危急值), and a STEMI code also activates the chest-pain
pathway for the patient.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Statement:
    code: str
    group: str  # rhythm, conduction, st_t, conclusion
    zh: str
    en: str
    critical: bool = False
    territory: str = ""  # for STEMI codes: the infarct territory

    @property
    def label(self) -> str:
        return f"{self.zh} / {self.en}"


GROUPS: dict[str, tuple[str, str]] = {
    "rhythm": ("节律", "rhythm"),
    "conduction": ("传导", "conduction"),
    "st_t": ("ST-T", "ST-T"),
    "conclusion": ("结论", "conclusion"),
}

STATEMENTS: tuple[Statement, ...] = (
    Statement("sinus_rhythm", "rhythm", "窦性心律", "sinus rhythm"),
    Statement("sinus_tachycardia", "rhythm", "窦性心动过速", "sinus tachycardia"),
    Statement("sinus_bradycardia", "rhythm", "窦性心动过缓", "sinus bradycardia"),
    Statement("atrial_fibrillation", "rhythm", "心房颤动", "atrial fibrillation"),
    Statement("atrial_flutter", "rhythm", "心房扑动", "atrial flutter"),
    Statement("ventricular_tachycardia", "rhythm", "室性心动过速", "ventricular tachycardia", critical=True),
    Statement("ventricular_fibrillation", "rhythm", "心室颤动", "ventricular fibrillation", critical=True),
    Statement("other_rhythm", "rhythm", "其他节律", "other rhythm"),
    Statement("normal_conduction", "conduction", "传导正常", "normal conduction"),
    Statement("av_block_1", "conduction", "一度房室传导阻滞", "first-degree AV block"),
    Statement("av_block_2", "conduction", "二度房室传导阻滞", "second-degree AV block"),
    Statement("av_block_3", "conduction", "三度房室传导阻滞", "third-degree AV block", critical=True),
    Statement("rbbb", "conduction", "完全性右束支传导阻滞", "right bundle branch block"),
    Statement("lbbb", "conduction", "完全性左束支传导阻滞", "left bundle branch block"),
    Statement("normal_st_t", "st_t", "ST-T 未见异常", "no ST-T abnormality"),
    Statement("st_elevation", "st_t", "ST 段抬高", "ST elevation"),
    Statement("st_depression", "st_t", "ST 段压低", "ST depression"),
    Statement("t_inversion", "st_t", "T 波倒置", "T-wave inversion"),
    Statement("long_qt", "st_t", "QT 间期延长", "long QT"),
    Statement("normal", "conclusion", "正常心电图", "normal ECG"),
    Statement("borderline", "conclusion", "大致正常心电图", "borderline ECG"),
    Statement("abnormal", "conclusion", "异常心电图", "abnormal ECG"),
    Statement("af", "conclusion", "心房颤动", "atrial fibrillation"),
    Statement("lvh", "conclusion", "左心室肥厚", "left ventricular hypertrophy"),
    Statement("stemi_anterior", "conclusion", "急性前壁ST段抬高型心肌梗死", "acute anterior STEMI",
              critical=True, territory="anterior"),
    Statement("stemi_inferior", "conclusion", "急性下壁ST段抬高型心肌梗死", "acute inferior STEMI",
              critical=True, territory="inferior"),
    Statement("stemi_lateral", "conclusion", "急性侧壁ST段抬高型心肌梗死", "acute lateral STEMI",
              critical=True, territory="lateral"),
    Statement("stemi_posterior", "conclusion", "急性后壁ST段抬高型心肌梗死", "acute posterior STEMI",
              critical=True, territory="posterior"),
    Statement("nstemi_suspected", "conclusion", "疑似非ST段抬高型急性冠脉综合征", "suspected NSTE-ACS",
              critical=True),
)

BY_CODE: dict[str, Statement] = {s.code: s for s in STATEMENTS}

# Leads that look at each territory (contiguous leads for the STEMI criterion).
TERRITORY_LEADS: dict[str, tuple[str, ...]] = {
    "anterior": ("V1", "V2", "V3", "V4"),
    "inferior": ("II", "III", "aVF"),
    "lateral": ("I", "aVL", "V5", "V6"),
}


def is_stemi(codes: list[str] | tuple[str, ...]) -> bool:
    return any(c.startswith("stemi_") for c in codes)


def in_group(group: str) -> tuple[Statement, ...]:
    return tuple(s for s in STATEMENTS if s.group == group)
