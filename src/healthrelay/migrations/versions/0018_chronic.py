"""chronic disease management: registries, family-doctor contracts, readings, follow-ups, calls, team tasks

Seeds the data a county tunes: the hypertension and type 2 diabetes registries with their rules (national
basic public-health specification: 4 face-to-face visits a year, review in 14 days when uncontrolled, refer
up at SBP >= 180 / DBP >= 110 or glucose >= 16.7 / <= 3.9 mmol/L, check on the referral in 14 days; control
below 140/90, 150/90 from 65; fasting glucose below 7.0), the family-doctor service packages, and the
worklist call outcomes with the days each hides a patient from the overdue list.

Revision ID: 0018
Revises: 0017
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import healthrelay.core.db

revision: str = '0018'
down_revision: str | None = '0017'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('call_outcome_rules',
    sa.Column('code', sa.String(length=30), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('name_en', sa.String(length=100), nullable=False),
    sa.Column('hide_days', sa.Integer(), nullable=False),
    sa.Column('closes_with_status', sa.String(length=10), nullable=False),
    sa.PrimaryKeyConstraint('code', name=op.f('pk_call_outcome_rules'))
    )
    op.create_table('chronic_conditions',
    sa.Column('code', sa.String(length=20), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('name_en', sa.String(length=100), nullable=False),
    sa.Column('icd10_prefixes', sa.JSON(), nullable=False),
    sa.Column('rules', sa.JSON(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('code', name=op.f('pk_chronic_conditions'))
    )
    op.create_table('service_packages',
    sa.Column('code', sa.String(length=30), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('name_en', sa.String(length=100), nullable=False),
    sa.Column('price_fen', sa.Integer(), nullable=False),
    sa.Column('items', sa.JSON(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('code', name=op.f('pk_service_packages'))
    )
    op.create_table('monitoring_points',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('organisation_id', sa.Integer(), nullable=False),
    sa.Column('area_id', sa.Integer(), nullable=True),
    sa.Column('device_serials', sa.JSON(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['area_id'], ['areas.id'], name=op.f('fk_monitoring_points_area_id_areas')),
    sa.ForeignKeyConstraint(['organisation_id'], ['organisations.id'], name=op.f('fk_monitoring_points_organisation_id_organisations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_monitoring_points')),
    sa.UniqueConstraint('code', name=op.f('uq_monitoring_points_code'))
    )
    with op.batch_alter_table('monitoring_points', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_monitoring_points_area_id'), ['area_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_monitoring_points_organisation_id'), ['organisation_id'], unique=False)

    op.create_table('chronic_enrolments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('condition_code', sa.String(length=20), nullable=False),
    sa.Column('organisation_id', sa.Integer(), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=True),
    sa.Column('village_area_id', sa.Integer(), nullable=True),
    sa.Column('diagnosed_on', sa.Date(), nullable=False),
    sa.Column('source', sa.String(length=20), nullable=False),
    sa.Column('risk_factors', sa.JSON(), nullable=False),
    sa.Column('complications', sa.JSON(), nullable=False),
    sa.Column('medicines', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('enrolled_at', healthrelay.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('enrolled_by_user_id', sa.Integer(), nullable=True),
    sa.Column('closed_at', healthrelay.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('closed_reason', sa.String(length=200), nullable=False),
    sa.Column('next_visit_due', sa.Date(), nullable=True),
    sa.Column('next_visit_kind', sa.String(length=10), nullable=False),
    sa.Column('last_visit_on', sa.Date(), nullable=True),
    sa.Column('last_classification', sa.String(length=20), nullable=False),
    sa.Column('uncontrolled_streak', sa.Integer(), nullable=False),
    sa.Column('last_sbp', sa.Integer(), nullable=True),
    sa.Column('last_dbp', sa.Integer(), nullable=True),
    sa.Column('last_bp_at', healthrelay.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_glucose', sa.Float(), nullable=True),
    sa.Column('last_glucose_at', healthrelay.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_contact_at', healthrelay.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('risk_level', sa.Integer(), nullable=False),
    sa.Column('hidden_until', sa.Date(), nullable=True),
    sa.ForeignKeyConstraint(['condition_code'], ['chronic_conditions.code'], name=op.f('fk_chronic_enrolments_condition_code_chronic_conditions')),
    sa.ForeignKeyConstraint(['enrolled_by_user_id'], ['users.id'], name=op.f('fk_chronic_enrolments_enrolled_by_user_id_users')),
    sa.ForeignKeyConstraint(['organisation_id'], ['organisations.id'], name=op.f('fk_chronic_enrolments_organisation_id_organisations')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_chronic_enrolments_patient_id_patients')),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_chronic_enrolments_team_id_teams')),
    sa.ForeignKeyConstraint(['village_area_id'], ['areas.id'], name=op.f('fk_chronic_enrolments_village_area_id_areas')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chronic_enrolments')),
    sa.UniqueConstraint('patient_id', 'condition_code', name='uq_chronic_enrolment_patient_condition')
    )
    with op.batch_alter_table('chronic_enrolments', schema=None) as batch_op:
        batch_op.create_index('ix_chronic_enrolments_org', ['organisation_id', 'condition_code', 'status'], unique=False)
        batch_op.create_index(batch_op.f('ix_chronic_enrolments_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index('ix_chronic_enrolments_team_due', ['team_id', 'status', 'next_visit_due'], unique=False)
        batch_op.create_index('ix_chronic_enrolments_village', ['village_area_id', 'condition_code', 'status'], unique=False)

    op.create_table('chronic_readings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('point_id', sa.Integer(), nullable=True),
    sa.Column('organisation_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('measured_at', healthrelay.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sbp', sa.Integer(), nullable=True),
    sa.Column('dbp', sa.Integer(), nullable=True),
    sa.Column('pulse', sa.Integer(), nullable=True),
    sa.Column('glucose_mmol', sa.Float(), nullable=True),
    sa.Column('glucose_context', sa.String(length=12), nullable=False),
    sa.Column('source', sa.String(length=12), nullable=False),
    sa.Column('device_serial', sa.String(length=60), nullable=True),
    sa.Column('device_record_id', sa.String(length=60), nullable=True),
    sa.Column('recorded_by_user_id', sa.Integer(), nullable=True),
    sa.Column('recorded_at', healthrelay.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organisation_id'], ['organisations.id'], name=op.f('fk_chronic_readings_organisation_id_organisations')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_chronic_readings_patient_id_patients')),
    sa.ForeignKeyConstraint(['point_id'], ['monitoring_points.id'], name=op.f('fk_chronic_readings_point_id_monitoring_points')),
    sa.ForeignKeyConstraint(['recorded_by_user_id'], ['users.id'], name=op.f('fk_chronic_readings_recorded_by_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chronic_readings')),
    sa.UniqueConstraint('device_serial', 'device_record_id', name='uq_chronic_readings_device_record')
    )
    with op.batch_alter_table('chronic_readings', schema=None) as batch_op:
        batch_op.create_index('ix_chronic_readings_patient_time', ['patient_id', 'measured_at'], unique=False)
        batch_op.create_index('ix_chronic_readings_point_time', ['point_id', 'measured_at'], unique=False)

    op.create_table('family_doctor_contracts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('number', sa.String(length=30), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=False),
    sa.Column('package_code', sa.String(length=30), nullable=False),
    sa.Column('starts_on', sa.Date(), nullable=False),
    sa.Column('ends_on', sa.Date(), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('signed_at', healthrelay.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('signed_by_user_id', sa.Integer(), nullable=True),
    sa.Column('ended_at', healthrelay.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('ended_reason', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['package_code'], ['service_packages.code'], name=op.f('fk_family_doctor_contracts_package_code_service_packages')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_family_doctor_contracts_patient_id_patients')),
    sa.ForeignKeyConstraint(['signed_by_user_id'], ['users.id'], name=op.f('fk_family_doctor_contracts_signed_by_user_id_users')),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_family_doctor_contracts_team_id_teams')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_family_doctor_contracts')),
    sa.UniqueConstraint('number', name=op.f('uq_family_doctor_contracts_number'))
    )
    with op.batch_alter_table('family_doctor_contracts', schema=None) as batch_op:
        batch_op.create_index('ix_fd_contracts_patient_status', ['patient_id', 'status'], unique=False)
        batch_op.create_index('ix_fd_contracts_team_status', ['team_id', 'status', 'ends_on'], unique=False)

    op.create_table('chronic_calls',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enrolment_id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=True),
    sa.Column('outcome_code', sa.String(length=30), nullable=False),
    sa.Column('hidden_until', sa.Date(), nullable=True),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('called_at', healthrelay.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('called_by_user_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['called_by_user_id'], ['users.id'], name=op.f('fk_chronic_calls_called_by_user_id_users')),
    sa.ForeignKeyConstraint(['enrolment_id'], ['chronic_enrolments.id'], name=op.f('fk_chronic_calls_enrolment_id_chronic_enrolments')),
    sa.ForeignKeyConstraint(['outcome_code'], ['call_outcome_rules.code'], name=op.f('fk_chronic_calls_outcome_code_call_outcome_rules')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_chronic_calls_patient_id_patients')),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_chronic_calls_team_id_teams')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chronic_calls'))
    )
    with op.batch_alter_table('chronic_calls', schema=None) as batch_op:
        batch_op.create_index('ix_chronic_calls_enrolment_time', ['enrolment_id', 'called_at'], unique=False)

    op.create_table('chronic_follow_ups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enrolment_id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('condition_code', sa.String(length=20), nullable=False),
    sa.Column('organisation_id', sa.Integer(), nullable=False),
    sa.Column('visit_on', sa.Date(), nullable=False),
    sa.Column('mode', sa.String(length=10), nullable=False),
    sa.Column('symptoms', sa.JSON(), nullable=False),
    sa.Column('sbp', sa.Integer(), nullable=True),
    sa.Column('dbp', sa.Integer(), nullable=True),
    sa.Column('heart_rate', sa.Integer(), nullable=True),
    sa.Column('weight_kg', sa.Float(), nullable=True),
    sa.Column('height_cm', sa.Float(), nullable=True),
    sa.Column('bmi', sa.Float(), nullable=True),
    sa.Column('lifestyle', sa.JSON(), nullable=False),
    sa.Column('medicines', sa.JSON(), nullable=False),
    sa.Column('adherence', sa.String(length=12), nullable=False),
    sa.Column('side_effects', sa.Text(), nullable=False),
    sa.Column('fasting_glucose', sa.Float(), nullable=True),
    sa.Column('hba1c', sa.Float(), nullable=True),
    sa.Column('foot_pulse', sa.String(length=20), nullable=False),
    sa.Column('hypoglycaemia', sa.String(length=12), nullable=False),
    sa.Column('classification', sa.String(length=20), nullable=False),
    sa.Column('next_visit_on', sa.Date(), nullable=True),
    sa.Column('referral_id', sa.Integer(), nullable=True),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('recorded_by_user_id', sa.Integer(), nullable=True),
    sa.Column('recorded_at', healthrelay.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['condition_code'], ['chronic_conditions.code'], name=op.f('fk_chronic_follow_ups_condition_code_chronic_conditions')),
    sa.ForeignKeyConstraint(['enrolment_id'], ['chronic_enrolments.id'], name=op.f('fk_chronic_follow_ups_enrolment_id_chronic_enrolments')),
    sa.ForeignKeyConstraint(['organisation_id'], ['organisations.id'], name=op.f('fk_chronic_follow_ups_organisation_id_organisations')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_chronic_follow_ups_patient_id_patients')),
    sa.ForeignKeyConstraint(['recorded_by_user_id'], ['users.id'], name=op.f('fk_chronic_follow_ups_recorded_by_user_id_users')),
    sa.ForeignKeyConstraint(['referral_id'], ['referrals.id'], name=op.f('fk_chronic_follow_ups_referral_id_referrals')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chronic_follow_ups'))
    )
    with op.batch_alter_table('chronic_follow_ups', schema=None) as batch_op:
        batch_op.create_index('ix_chronic_follow_ups_enrolment_date', ['enrolment_id', 'visit_on'], unique=False)
        batch_op.create_index('ix_chronic_follow_ups_patient_date', ['patient_id', 'visit_on'], unique=False)

    op.create_table('chronic_tasks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=True),
    sa.Column('organisation_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('title', sa.String(length=300), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('due_on', sa.Date(), nullable=False),
    sa.Column('enrolment_id', sa.Integer(), nullable=True),
    sa.Column('referral_id', sa.Integer(), nullable=True),
    sa.Column('screening_result_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('created_at', healthrelay.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by_user_id', sa.Integer(), nullable=True),
    sa.Column('done_at', healthrelay.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('done_by_user_id', sa.Integer(), nullable=True),
    sa.Column('outcome', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['created_by_user_id'], ['users.id'], name=op.f('fk_chronic_tasks_created_by_user_id_users')),
    sa.ForeignKeyConstraint(['done_by_user_id'], ['users.id'], name=op.f('fk_chronic_tasks_done_by_user_id_users')),
    sa.ForeignKeyConstraint(['enrolment_id'], ['chronic_enrolments.id'], name=op.f('fk_chronic_tasks_enrolment_id_chronic_enrolments')),
    sa.ForeignKeyConstraint(['organisation_id'], ['organisations.id'], name=op.f('fk_chronic_tasks_organisation_id_organisations')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_chronic_tasks_patient_id_patients')),
    sa.ForeignKeyConstraint(['referral_id'], ['referrals.id'], name=op.f('fk_chronic_tasks_referral_id_referrals')),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_chronic_tasks_team_id_teams')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chronic_tasks'))
    )
    with op.batch_alter_table('chronic_tasks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chronic_tasks_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_chronic_tasks_screening_result_id'), ['screening_result_id'], unique=False)
        batch_op.create_index('ix_chronic_tasks_team_status_due', ['team_id', 'status', 'due_on'], unique=False)


    _seed()


_COMMON = {"visits_per_year": 4, "review_days": 14, "referral_check_days": 14, "control_window_days": 90,
           "lost_after_days": 365, "elderly_age": 65, "danger_sbp": 180, "danger_dbp": 110,
           "glucose_high": 16.7, "glucose_low": 3.9, "bp_target": [140, 90], "bp_target_elderly": [150, 90],
           "fpg_target": 7.0}
# Adult prevalence for the management rate's denominator (China Hypertension Survey 2012-2015: 27.9%;
# diabetes, adults 2015-2017: 11.2%); a county replaces them with its own survey's figures.
CONDITIONS = [
    ("htn", "高血压", "Hypertension", ["I10", "I11", "I12", "I13", "I15"],
     {**_COMMON, "prevalence": 0.279, "uses_bp": True, "uses_glucose": False}),
    ("t2dm", "2型糖尿病", "Type 2 diabetes", ["E11"],
     {**_COMMON, "prevalence": 0.112, "uses_bp": False, "uses_glucose": True}),
]
PACKAGES = [
    ("basic", "基础服务包", "Basic package", 0, ["健康档案", "健康教育", "预约转诊", "用药指导"]),
    ("chronic", "慢病服务包", "Chronic disease package", 3000,
     ["高血压/糖尿病随访（每年≥4次）", "血压血糖监测", "年度体检", "长处方", "优先转诊"]),
    ("elderly", "老年人服务包", "Elderly package", 2000, ["年度体检", "中医体质辨识", "上门服务"]),
    ("maternal_child", "妇幼服务包", "Maternal and child package", 2000, ["孕产妇随访", "儿童健康管理", "预防接种提醒"]),
]
CALL_OUTCOMES = [
    ("agreed_to_visit", "同意来访", "Agreed to visit", 14, ""),
    ("call_later", "稍后再打", "Call later", 3, ""),
    ("no_answer", "无人接听", "No answer", 1, ""),
    ("moved", "已迁出", "Moved away", 0, "moved"),
    ("died", "已死亡", "Died", 0, "died"),
]


def _seed() -> None:
    conditions = sa.table("chronic_conditions", sa.column("code"), sa.column("name"), sa.column("name_en"),
                          sa.column("icd10_prefixes", sa.JSON), sa.column("rules", sa.JSON), sa.column("active"))
    op.bulk_insert(conditions, [{"code": c, "name": n, "name_en": e, "icd10_prefixes": p, "rules": r, "active": True}
                                for c, n, e, p, r in CONDITIONS])
    packages = sa.table("service_packages", sa.column("code"), sa.column("name"), sa.column("name_en"),
                        sa.column("price_fen"), sa.column("items", sa.JSON), sa.column("active"))
    op.bulk_insert(packages, [{"code": c, "name": n, "name_en": e, "price_fen": f, "items": i, "active": True}
                              for c, n, e, f, i in PACKAGES])
    outcomes = sa.table("call_outcome_rules", sa.column("code"), sa.column("name"), sa.column("name_en"),
                        sa.column("hide_days"), sa.column("closes_with_status"))
    op.bulk_insert(outcomes, [{"code": c, "name": n, "name_en": e, "hide_days": d, "closes_with_status": st}
                              for c, n, e, d, st in CALL_OUTCOMES])


def downgrade() -> None:
    with op.batch_alter_table('chronic_tasks', schema=None) as batch_op:
        batch_op.drop_index('ix_chronic_tasks_team_status_due')
        batch_op.drop_index(batch_op.f('ix_chronic_tasks_screening_result_id'))
        batch_op.drop_index(batch_op.f('ix_chronic_tasks_patient_id'))

    op.drop_table('chronic_tasks')
    with op.batch_alter_table('chronic_follow_ups', schema=None) as batch_op:
        batch_op.drop_index('ix_chronic_follow_ups_patient_date')
        batch_op.drop_index('ix_chronic_follow_ups_enrolment_date')

    op.drop_table('chronic_follow_ups')
    with op.batch_alter_table('chronic_calls', schema=None) as batch_op:
        batch_op.drop_index('ix_chronic_calls_enrolment_time')

    op.drop_table('chronic_calls')
    with op.batch_alter_table('family_doctor_contracts', schema=None) as batch_op:
        batch_op.drop_index('ix_fd_contracts_team_status')
        batch_op.drop_index('ix_fd_contracts_patient_status')

    op.drop_table('family_doctor_contracts')
    with op.batch_alter_table('chronic_readings', schema=None) as batch_op:
        batch_op.drop_index('ix_chronic_readings_point_time')
        batch_op.drop_index('ix_chronic_readings_patient_time')

    op.drop_table('chronic_readings')
    with op.batch_alter_table('chronic_enrolments', schema=None) as batch_op:
        batch_op.drop_index('ix_chronic_enrolments_village')
        batch_op.drop_index('ix_chronic_enrolments_team_due')
        batch_op.drop_index(batch_op.f('ix_chronic_enrolments_patient_id'))
        batch_op.drop_index('ix_chronic_enrolments_org')

    op.drop_table('chronic_enrolments')
    with op.batch_alter_table('monitoring_points', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_monitoring_points_organisation_id'))
        batch_op.drop_index(batch_op.f('ix_monitoring_points_area_id'))

    op.drop_table('monitoring_points')
    op.drop_table('service_packages')
    op.drop_table('chronic_conditions')
    op.drop_table('call_outcome_rules')
