"""results: lab results and examination reports from every member, and the code dictionary

Seeds `result_codes`: about thirty common lab tests (names in Chinese and English, unit, adult reference
range, critical limits where a county's 危急值 list usually has them, LOINC and other codes senders use) and
the examinations the members perform (modality and DICOM body part, so a study finds its code). The values
are defaults: a county changes the rows, and the reference range a lab sends with a result wins for that
result.

Revision ID: 0014
Revises: 0013
"""
import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from healthrelay.core.db import UTCDateTime

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UTC = UTCDateTime(timezone=True)

# (code, zh, en, category, unit, reference range, critical low, critical high, LOINC, aliases)
LABS: list[tuple[str, str, str, str, str, str, float | None, float | None, str, list[str]]] = [
    ("GLU", "葡萄糖", "glucose", "chemistry", "mmol/L", "3.9-6.1", 2.8, 22.2, "2345-7", ["FPG", "GLUC", "BG"]),
    ("K", "钾", "potassium", "electrolyte", "mmol/L", "3.5-5.3", 2.8, 6.2, "2823-3", ["K+", "KAL"]),
    ("NA", "钠", "sodium", "electrolyte", "mmol/L", "137-147", 120.0, 160.0, "2951-2", ["NA+"]),
    ("CL", "氯", "chloride", "electrolyte", "mmol/L", "99-110", None, None, "2075-0", ["CL-"]),
    ("CA", "钙", "calcium", "electrolyte", "mmol/L", "2.11-2.52", 1.75, 3.5, "17861-6", ["CA2+", "CALC"]),
    ("HBA1C", "糖化血红蛋白", "haemoglobin A1c", "hba1c", "%", "4.0-6.0", None, None, "4548-4",
     ["A1C", "GHB", "HBA1"]),
    ("ALT", "丙氨酸氨基转移酶", "alanine aminotransferase", "chemistry", "U/L", "9-50", None, None, "1742-6",
     ["GPT", "SGPT"]),
    ("AST", "天门冬氨酸氨基转移酶", "aspartate aminotransferase", "chemistry", "U/L", "15-40", None, None,
     "1920-8", ["GOT", "SGOT"]),
    ("TBIL", "总胆红素", "total bilirubin", "chemistry", "µmol/L", "0-21", None, None, "1975-2", ["T-BIL", "TB"]),
    ("ALB", "白蛋白", "albumin", "chemistry", "g/L", "40-55", None, None, "1751-7", []),
    ("CREA", "肌酐", "creatinine", "chemistry", "µmol/L", "57-111", None, 707.0, "2160-0", ["CR", "CRE", "SCR"]),
    ("UREA", "尿素", "urea", "chemistry", "mmol/L", "3.1-8.0", None, 35.7, "3091-6", ["BUN", "UN"]),
    ("UA", "尿酸", "uric acid", "chemistry", "µmol/L", "208-428", None, None, "3084-1", ["URIC"]),
    ("TC", "总胆固醇", "total cholesterol", "chemistry", "mmol/L", "<5.2", None, None, "2093-3", ["CHOL"]),
    ("TG", "甘油三酯", "triglycerides", "chemistry", "mmol/L", "<1.7", None, None, "2571-8", ["TRIG"]),
    ("LDL", "低密度脂蛋白胆固醇", "LDL cholesterol", "chemistry", "mmol/L", "<3.4", None, None, "13457-7",
     ["LDL-C"]),
    ("HDL", "高密度脂蛋白胆固醇", "HDL cholesterol", "chemistry", "mmol/L", ">1.0", None, None, "2085-9",
     ["HDL-C"]),
    ("AMY", "淀粉酶", "amylase", "chemistry", "U/L", "35-135", None, None, "1798-8", ["AMS"]),
    ("CK", "肌酸激酶", "creatine kinase", "cardiac", "U/L", "50-310", None, None, "2157-6", ["CPK"]),
    ("CKMB", "肌酸激酶同工酶", "CK-MB", "cardiac", "ng/mL", "0-5", None, None, "13969-1", ["CK-MB"]),
    ("CTNI", "肌钙蛋白I", "troponin I", "cardiac", "ng/mL", "<0.04", None, 0.04, "10839-9", ["TNI", "CTNI-HS"]),
    ("NTBNP", "N端脑钠肽前体", "NT-proBNP", "cardiac", "pg/mL", "<125", None, None, "33762-6", ["NT-PROBNP"]),
    ("WBC", "白细胞计数", "white blood cells", "haematology", "10^9/L", "3.5-9.5", 2.0, 30.0, "6690-2", []),
    ("RBC", "红细胞计数", "red blood cells", "haematology", "10^12/L", "4.3-5.8", None, None, "789-8", []),
    ("HGB", "血红蛋白", "haemoglobin", "haematology", "g/L", "130-175", 50.0, None, "718-7", ["HB", "HGB-B"]),
    ("PLT", "血小板计数", "platelets", "haematology", "10^9/L", "125-350", 30.0, 1000.0, "777-3", []),
    ("PT", "凝血酶原时间", "prothrombin time", "coagulation", "s", "11-14.5", None, None, "5902-2", []),
    ("INR", "国际标准化比值", "INR", "coagulation", "", "0.8-1.2", None, 4.0, "6301-6", ["PT-INR"]),
    ("APTT", "活化部分凝血活酶时间", "activated partial thromboplastin time", "coagulation", "s", "25-37",
     None, 70.0, "3173-2", []),
    ("FIB", "纤维蛋白原", "fibrinogen", "coagulation", "g/L", "2-4", 1.0, None, "3255-7", ["FBG"]),
    ("DDIM", "D-二聚体", "D-dimer", "coagulation", "mg/L FEU", "<0.55", None, None, "48065-7", ["D-D", "DD"]),
    ("CRP", "C反应蛋白", "C-reactive protein", "inflammation", "mg/L", "<10", None, None, "1988-5", ["HSCRP"]),
    ("PCT", "降钙素原", "procalcitonin", "inflammation", "ng/mL", "<0.05", None, None, "33959-8", []),
    ("TSH", "促甲状腺激素", "thyroid-stimulating hormone", "endocrine", "mIU/L", "0.27-4.2", None, None,
     "3016-3", []),
    ("PH", "动脉血酸碱度", "arterial blood pH", "blood_gas", "", "7.35-7.45", 7.2, 7.6, "2744-1", ["BG-PH"]),
    ("HBSAG", "乙型肝炎表面抗原", "hepatitis B surface antigen", "serology", "", "阴性", None, None, "5196-1",
     ["HBS-AG"]),
    ("UPRO", "尿蛋白定性", "urine protein", "urinalysis", "", "阴性", None, None, "20454-5", ["PRO", "U-PRO"]),
]

# (code, zh, en, category, modality, DICOM body part ("" = any part of that modality), aliases)
EXAMS: list[tuple[str, str, str, str, str, str, list[str]]] = [
    ("CT_HEAD", "头颅CT", "CT head", "imaging", "CT", "HEAD", ["CTHEAD"]),
    ("CT_CHEST", "胸部CT", "CT chest", "imaging", "CT", "CHEST", ["CTCHEST"]),
    ("CT_ABD", "腹部CT", "CT abdomen", "imaging", "CT", "ABDOMEN", ["CTABD"]),
    ("CT_LSPINE", "腰椎CT", "CT lumbar spine", "imaging", "CT", "LSPINE", []),
    ("CT_OTHER", "CT检查（其他部位）", "CT, other region", "imaging", "CT", "", []),
    ("DR_CHEST", "胸部X线摄影（DR）", "chest radiograph", "imaging", "DR", "CHEST", ["CXR", "DX_CHEST"]),
    ("DR_OTHER", "X线摄影（其他部位）", "radiograph, other region", "imaging", "DR", "", []),
    ("MR_HEAD", "头颅磁共振", "MRI head", "imaging", "MR", "HEAD", ["MRHEAD"]),
    ("MR_LSPINE", "腰椎磁共振", "MRI lumbar spine", "imaging", "MR", "LSPINE", []),
    ("MR_OTHER", "磁共振（其他部位）", "MRI, other region", "imaging", "MR", "", []),
    ("US_ABD", "腹部超声", "abdominal ultrasound", "ultrasound", "US", "ABDOMEN", []),
    ("US_HEART", "超声心动图", "echocardiography", "ultrasound", "US", "HEART", ["UCG", "ECHO"]),
    ("US_THYROID", "甲状腺超声", "thyroid ultrasound", "ultrasound", "US", "THYROID", []),
    ("US_OTHER", "超声检查（其他部位）", "ultrasound, other region", "ultrasound", "US", "", []),
    ("ECG_12", "十二导联心电图", "12-lead ECG", "ecg", "ECG", "", ["ECG", "EKG"]),
    ("PATH_BIOPSY", "活检组织病理", "biopsy histopathology", "pathology", "PATH", "", ["BIOPSY"]),
    ("GASTROSCOPY", "胃镜检查", "gastroscopy", "endoscopy", "ES", "STOMACH", ["EGD"]),
    ("COLONOSCOPY", "结肠镜检查", "colonoscopy", "endoscopy", "ES", "COLON", []),
]


def upgrade() -> None:
    codes = op.create_table(
        "result_codes",
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("name_zh", sa.String(length=100), nullable=False),
        sa.Column("name_en", sa.String(length=200), nullable=False),
        sa.Column("category", sa.String(length=20), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("body_part", sa.String(length=40), nullable=False),
        sa.Column("unit", sa.String(length=40), nullable=False),
        sa.Column("reference_range", sa.String(length=60), nullable=False),
        sa.Column("critical_low", sa.Float(), nullable=True),
        sa.Column("critical_high", sa.Float(), nullable=True),
        sa.Column("loinc", sa.String(length=20), nullable=False),
        sa.Column("aliases", sa.Text(), nullable=False),  # a JSON list as text (results.models.JSONList)
        sa.PrimaryKeyConstraint("code", name=op.f("pk_result_codes")),
    )
    op.create_table(
        "lab_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("organisation_id", sa.Integer(), nullable=False),
        sa.Column("ordering_organisation_id", sa.Integer(), nullable=True),
        sa.Column("ordered_by_user_id", sa.Integer(), nullable=True),
        sa.Column("order_number", sa.String(length=40), nullable=False),
        sa.Column("filler_number", sa.String(length=40), nullable=False),
        sa.Column("test_code", sa.String(length=40), nullable=False),
        sa.Column("test_name", sa.String(length=200), nullable=False),
        sa.Column("value_text", sa.String(length=200), nullable=False),
        sa.Column("value_numeric", sa.Float(), nullable=True),
        sa.Column("unit", sa.String(length=40), nullable=False),
        sa.Column("reference_range", sa.String(length=60), nullable=False),
        sa.Column("abnormal_flag", sa.String(length=4), nullable=False),
        sa.Column("specimen", sa.String(length=60), nullable=False),
        sa.Column("collected_at", _UTC, nullable=True),
        sa.Column("reported_at", _UTC, nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("critical", sa.Boolean(), nullable=False),
        sa.Column("recognition_scope", sa.String(length=20), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("hl7_message_id", sa.Integer(), nullable=True),
        sa.Column("entered_by_user_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_lab_results_patient_id_patients")),
        sa.ForeignKeyConstraint(["organisation_id"], ["organisations.id"],
                                name=op.f("fk_lab_results_organisation_id_organisations")),
        sa.ForeignKeyConstraint(["ordering_organisation_id"], ["organisations.id"],
                                name=op.f("fk_lab_results_ordering_organisation_id_organisations")),
        sa.ForeignKeyConstraint(["ordered_by_user_id"], ["users.id"],
                                name=op.f("fk_lab_results_ordered_by_user_id_users")),
        sa.ForeignKeyConstraint(["entered_by_user_id"], ["users.id"],
                                name=op.f("fk_lab_results_entered_by_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lab_results")),
    )
    with op.batch_alter_table("lab_results", schema=None) as batch_op:
        batch_op.create_index("ix_lab_results_patient_test_reported", ["patient_id", "test_code", "reported_at"],
                              unique=False)
        batch_op.create_index("uq_lab_results_filler", ["organisation_id", "filler_number", "test_code"], unique=True,
                              postgresql_where=sa.text("filler_number <> ''"),
                              sqlite_where=sa.text("filler_number <> ''"))
    op.create_table(
        "exam_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("organisation_id", sa.Integer(), nullable=False),
        sa.Column("ordering_organisation_id", sa.Integer(), nullable=True),
        sa.Column("exam_code", sa.String(length=40), nullable=False),
        sa.Column("exam_name", sa.String(length=200), nullable=False),
        sa.Column("category", sa.String(length=20), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("body_part", sa.String(length=40), nullable=False),
        sa.Column("performed_at", _UTC, nullable=False),
        sa.Column("reported_at", _UTC, nullable=False),
        sa.Column("findings", sa.Text(), nullable=False),
        sa.Column("impression", sa.Text(), nullable=False),
        sa.Column("recognition_scope", sa.String(length=20), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("consult_request_id", sa.Integer(), nullable=True),
        sa.Column("order_number", sa.String(length=40), nullable=False),
        sa.Column("filler_number", sa.String(length=40), nullable=False),
        sa.Column("critical", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("hl7_message_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_exam_results_patient_id_patients")),
        sa.ForeignKeyConstraint(["organisation_id"], ["organisations.id"],
                                name=op.f("fk_exam_results_organisation_id_organisations")),
        sa.ForeignKeyConstraint(["ordering_organisation_id"], ["organisations.id"],
                                name=op.f("fk_exam_results_ordering_organisation_id_organisations")),
        sa.ForeignKeyConstraint(["consult_request_id"], ["consult_requests.id"],
                                name=op.f("fk_exam_results_consult_request_id_consult_requests")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exam_results")),
        sa.UniqueConstraint("consult_request_id", name=op.f("uq_exam_results_consult_request_id")),
    )
    with op.batch_alter_table("exam_results", schema=None) as batch_op:
        batch_op.create_index("ix_exam_results_patient_exam_performed", ["patient_id", "exam_code", "performed_at"],
                              unique=False)
        batch_op.create_index("uq_exam_results_filler", ["organisation_id", "filler_number", "exam_code"], unique=True,
                              postgresql_where=sa.text("filler_number <> ''"),
                              sqlite_where=sa.text("filler_number <> ''"))
    rows = [{"code": c, "kind": "lab", "name_zh": zh, "name_en": en, "category": cat, "modality": "",
             "body_part": "", "unit": unit, "reference_range": ref, "critical_low": low, "critical_high": high,
             "loinc": loinc, "aliases": json.dumps(aliases, ensure_ascii=False)}
            for c, zh, en, cat, unit, ref, low, high, loinc, aliases in LABS]
    rows += [{"code": c, "kind": "exam", "name_zh": zh, "name_en": en, "category": cat, "modality": modality,
              "body_part": part, "unit": "", "reference_range": "", "critical_low": None, "critical_high": None,
              "loinc": "", "aliases": json.dumps(aliases, ensure_ascii=False)}
             for c, zh, en, cat, modality, part, aliases in EXAMS]
    op.bulk_insert(codes, rows)


def downgrade() -> None:
    with op.batch_alter_table("exam_results", schema=None) as batch_op:
        batch_op.drop_index("uq_exam_results_filler", sqlite_where=sa.text("filler_number <> ''"),
                            postgresql_where=sa.text("filler_number <> ''"))
        batch_op.drop_index("ix_exam_results_patient_exam_performed")
    op.drop_table("exam_results")
    with op.batch_alter_table("lab_results", schema=None) as batch_op:
        batch_op.drop_index("uq_lab_results_filler", sqlite_where=sa.text("filler_number <> ''"),
                            postgresql_where=sa.text("filler_number <> ''"))
        batch_op.drop_index("ix_lab_results_patient_test_reported")
    op.drop_table("lab_results")
    op.drop_table("result_codes")
