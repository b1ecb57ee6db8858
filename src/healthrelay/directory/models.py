"""The alliance directory: who belongs where, what each member can do, and who works there."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, Enum, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from healthrelay.core.db import Base, UTCDateTime, utcnow


def _enum(cls: type[enum.Enum]) -> Enum:
    # Store the value (a short ascii code) as a plain string on every backend.
    return Enum(cls, values_callable=lambda e: [m.value for m in e], native_enum=False, length=32,
                validate_strings=True)


class AllianceKind(enum.StrEnum):
    COUNTY_COMMUNITY = "county_community"  # 医共体
    SPECIALTY_ALLIANCE = "specialty_alliance"  # 专科联盟
    CROSS_REGION_AID = "cross_region_aid"  # 对口帮扶


class MembershipRole(enum.StrEnum):
    LEAD = "lead"
    MEMBER = "member"
    SUPPORTING = "supporting"


class OrgLevel(enum.StrEnum):
    PROVINCIAL = "provincial"
    TERTIARY = "tertiary"
    SECONDARY = "secondary"
    TOWNSHIP = "township"
    COMMUNITY = "community"
    VILLAGE = "village"


class OrgKind(enum.StrEnum):
    GENERAL_HOSPITAL = "general_hospital"
    TCM_HOSPITAL = "tcm_hospital"
    MATERNAL_CHILD = "maternal_child"
    TOWNSHIP_CENTRE = "township_centre"  # 乡镇卫生院
    COMMUNITY_CENTRE = "community_centre"  # 社区卫生服务中心
    VILLAGE_CLINIC = "village_clinic"  # 村卫生室
    EMERGENCY_STATION = "emergency_station"  # 急救站
    EMERGENCY_SUBSTATION = "emergency_substation"  # 急救分站
    HEALTH_BUREAU = "health_bureau"  # 卫健局


class Capability(enum.StrEnum):
    CT = "CT"
    MRI = "MRI"
    DR = "DR"
    ULTRASOUND = "US"
    ECG = "ECG"
    LAB = "LAB"
    PCI = "PCI"
    THROMBOLYSIS = "THROMBOLYSIS"
    ENDOSCOPY = "ENDOSCOPY"
    PATHOLOGY = "PATHOLOGY"
    DIALYSIS = "DIALYSIS"
    AMBULANCE = "AMBULANCE"


class TitleGrade(enum.StrEnum):
    """Professional title grades, most senior first."""

    CHIEF = "chief"  # 主任医师
    ASSOCIATE_CHIEF = "associate_chief"  # 副主任医师
    ATTENDING = "attending"  # 主治医师
    RESIDENT = "resident"  # 住院医师
    ASSISTANT = "assistant"  # 执业助理医师
    VILLAGE_DOCTOR = "village_doctor"  # 乡村医生
    NURSE = "nurse"  # 护士
    PHARMACIST = "pharmacist"  # 药师
    TECHNICIAN = "technician"  # 技师
    STAFF = "staff"  # 管理/调度人员


class TeamKind(enum.StrEnum):
    FAMILY_DOCTOR = "family_doctor"  # 家庭医生团队
    EXPERT_STUDIO = "expert_studio"  # 专家工作室
    MOBILE_MEDICAL = "mobile_medical"  # 巡回医疗队


class AreaLevel(enum.StrEnum):
    COUNTY = "county"
    TOWNSHIP = "township"
    VILLAGE = "village"


class Alliance(Base):
    __tablename__ = "alliances"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[AllianceKind] = mapped_column(_enum(AllianceKind))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    memberships: Mapped[list[AllianceMembership]] = relationship(back_populates="alliance")


class AllianceMembership(Base):
    __tablename__ = "alliance_memberships"
    __table_args__ = (UniqueConstraint("alliance_id", "organisation_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    alliance_id: Mapped[int] = mapped_column(ForeignKey("alliances.id", ondelete="CASCADE"), index=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    role: Mapped[MembershipRole] = mapped_column(_enum(MembershipRole))

    alliance: Mapped[Alliance] = relationship(back_populates="memberships")
    organisation: Mapped[Organisation] = relationship(back_populates="memberships")


class Area(Base):
    """Administrative places (county → township → village) that residents live in."""

    __tablename__ = "areas"
    __table_args__ = (UniqueConstraint("code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(100))
    level: Mapped[AreaLevel] = mapped_column(_enum(AreaLevel))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("areas.id"), index=True)
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    # Grids (网格) are named subdivisions of a village used for chronic-disease outreach.
    grids: Mapped[list[str]] = mapped_column(JSON, default=list)

    parent: Mapped[Area | None] = relationship(remote_side="Area.id")


class Organisation(Base):
    __tablename__ = "organisations"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    name_en: Mapped[str] = mapped_column(String(200), default="")
    level: Mapped[OrgLevel] = mapped_column(_enum(OrgLevel), index=True)
    kind: Mapped[OrgKind] = mapped_column(_enum(OrgKind))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"), index=True)
    area_id: Mapped[int | None] = mapped_column(ForeignKey("areas.id"), index=True)
    is_regional_centre: Mapped[bool] = mapped_column(default=False)  # 片区医疗中心
    address: Mapped[str] = mapped_column(String(300), default="")
    phone: Mapped[str] = mapped_column(String(40), default="")
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    parent: Mapped[Organisation | None] = relationship(remote_side="Organisation.id")
    memberships: Mapped[list[AllianceMembership]] = relationship(back_populates="organisation")
    departments: Mapped[list[Department]] = relationship(back_populates="organisation")
    capabilities: Mapped[list[OrganisationCapability]] = relationship(
        back_populates="organisation", cascade="all, delete-orphan")


class OrganisationCapability(Base):
    __tablename__ = "organisation_capabilities"
    __table_args__ = (UniqueConstraint("organisation_id", "capability"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"), index=True)
    capability: Mapped[Capability] = mapped_column(_enum(Capability), index=True)
    note: Mapped[str] = mapped_column(String(200), default="")

    organisation: Mapped[Organisation] = relationship(back_populates="capabilities")


class Specialty(Base):
    """Clinical disciplines (学科), shared by departments, practitioners and studios."""

    __tablename__ = "specialties"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(100), default="")


class Department(Base):
    __tablename__ = "departments"
    __table_args__ = (UniqueConstraint("organisation_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"), index=True)
    code: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(100))
    specialty_id: Mapped[int | None] = mapped_column(ForeignKey("specialties.id"), index=True)
    head_practitioner_id: Mapped[int | None] = mapped_column(ForeignKey("practitioners.id"))
    phone: Mapped[str] = mapped_column(String(40), default="")

    organisation: Mapped[Organisation] = relationship(back_populates="departments")
    specialty: Mapped[Specialty | None] = relationship()


class PractitionerSpecialty(Base):
    __tablename__ = "practitioner_specialties"

    practitioner_id: Mapped[int] = mapped_column(ForeignKey("practitioners.id", ondelete="CASCADE"),
                                                 primary_key=True)
    specialty_id: Mapped[int] = mapped_column(ForeignKey("specialties.id"), primary_key=True, index=True)


class Practitioner(Base):
    __tablename__ = "practitioners"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    sex: Mapped[str] = mapped_column(String(1), default="U")
    title_grade: Mapped[TitleGrade] = mapped_column(_enum(TitleGrade))
    years_independent_practice: Mapped[int] = mapped_column(Integer, default=0)
    licence_number: Mapped[str] = mapped_column(String(40), default="")
    phone: Mapped[str] = mapped_column(String(40), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    specialties: Mapped[list[Specialty]] = relationship(secondary="practitioner_specialties")
    posts: Mapped[list[Post]] = relationship(back_populates="practitioner", cascade="all, delete-orphan")


class Post(Base):
    """A practitioner's position at one organisation (多点执业: one person, several posts)."""

    __tablename__ = "posts"
    __table_args__ = (UniqueConstraint("practitioner_id", "organisation_id", "department_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    practitioner_id: Mapped[int] = mapped_column(ForeignKey("practitioners.id", ondelete="CASCADE"), index=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"), index=True)
    position: Mapped[str] = mapped_column(String(100), default="")
    is_primary: Mapped[bool] = mapped_column(default=True)

    practitioner: Mapped[Practitioner] = relationship(back_populates="posts")
    organisation: Mapped[Organisation] = relationship()
    department: Mapped[Department | None] = relationship()


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[TeamKind] = mapped_column(_enum(TeamKind), index=True)
    # The organisation that runs the team (a family-doctor team's centre, a studio's host hospital).
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    # Expert studios: the hospital the experts come from.
    home_organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"))
    specialty_id: Mapped[int | None] = mapped_column(ForeignKey("specialties.id"))
    # Family-doctor teams: the villages they serve.
    area_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    organisation: Mapped[Organisation] = relationship(foreign_keys=[organisation_id])
    home_organisation: Mapped[Organisation | None] = relationship(foreign_keys=[home_organisation_id])
    specialty: Mapped[Specialty | None] = relationship()
    members: Mapped[list[TeamMember]] = relationship(back_populates="team", cascade="all, delete-orphan")


class TeamMember(Base):
    __tablename__ = "team_members"
    __table_args__ = (UniqueConstraint("team_id", "practitioner_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    practitioner_id: Mapped[int] = mapped_column(ForeignKey("practitioners.id"), index=True)
    role: Mapped[str] = mapped_column(String(40), default="member")  # leader / member / assistant

    team: Mapped[Team] = relationship(back_populates="members")
    practitioner: Mapped[Practitioner] = relationship()
