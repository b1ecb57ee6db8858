"""Directory pages as staff see them (Chinese first), the htmx partial, and the Excel export."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import pytest
from openpyxl import load_workbook

from healthrelay.accounts.models import Role
from healthrelay.directory import service
from healthrelay.directory.models import Alliance, Organisation, Practitioner, Team
from tests import factories as f


@dataclass
class County:
    alliance: Alliance
    other_alliance: Alliance
    county: Organisation
    town: Organisation
    village: Organisation
    province: Organisation
    doctor: Practitioner
    team: Team
    studio: Team
    headers: dict[str, str]


@pytest.fixture
def county(client, db) -> County:
    alliance = service.create_alliance(db, code="QS", name="青山县医共体", kind="county_community")
    other = service.create_alliance(db, code="XT", name="省胸痛专科联盟", kind="specialty_alliance")
    province = service.create_organisation(db, code="P1", name="省人民医院", level="provincial",
                                           kind="general_hospital", latitude=28.68, longitude=115.89,
                                           capabilities=["CT", "MRI", "PCI"])
    county = service.create_organisation(db, code="C1", name="青山县人民医院", level="secondary",
                                         kind="general_hospital", latitude=29.10, longitude=115.20,
                                         capabilities=["CT", "DR", "ECG", "LAB"], address="青山县人民路 1 号")
    town = service.create_organisation(db, code="T1", name="白石镇卫生院", level="township", kind="township_centre",
                                       parent_id=county.id, latitude=29.21, longitude=115.33, is_regional_centre=True,
                                       capabilities=["DR", "ECG"])
    village = service.create_organisation(db, code="V1", name="白石村卫生室", level="village",
                                          kind="village_clinic", parent_id=town.id, latitude=29.23, longitude=115.36)
    service.create_organisation(db, code="X1", name="外县卫生院", level="township", kind="township_centre")
    for org, role in ((county, "lead"), (town, "member"), (village, "member"), (province, "supporting")):
        service.add_member(db, alliance_id=alliance.id, organisation_id=org.id, role=role)
    service.add_member(db, alliance_id=other.id, organisation_id=province.id, role="lead")
    cardio = service.create_specialty(db, code="CARD", name="心血管内科")
    dept = service.create_department(db, organisation_id=county.id, code="XNK", name="心内科", specialty_id=cardio.id)
    doctor = service.create_practitioner(
        db, code="D1", name="张建国", title_grade="associate_chief", years_independent_practice=15,
        specialty_ids=[cardio.id], posts=[{"organisation_id": county.id, "department_id": dept.id},
                                          {"organisation_id": town.id, "position": "下沉坐诊"}])
    village_doc = service.create_practitioner(db, code="D2", name="刘村医", title_grade="village_doctor",
                                              posts=[{"organisation_id": village.id}])
    team = service.create_team(db, code="FD1", name="白石镇家庭医生一队", kind="family_doctor",
                               organisation_id=town.id, members=[{"practitioner_id": doctor.id, "role": "leader"},
                                                                 {"practitioner_id": village_doc.id}])
    studio = service.create_team(db, code="ES1", name="省医心内科专家工作室", kind="expert_studio",
                                 organisation_id=county.id, home_organisation_id=province.id)
    user = f.user(db, role=Role.CLINICIAN, organisation=town)
    db.commit()
    return County(alliance, other, county, town, village, province, doctor, team, studio,
                  f.bearer(client, user.username))


def _listed_codes(html: str) -> set[str]:
    """Organisation codes shown as rows of the result list (each row prints its code under the name)."""
    return set(re.findall(r'<div class="dir-code">([^<]+)</div>', html))


def test_directory_lists_alliances_and_members_grouped_by_level(client, county: County) -> None:
    r = client.get("/directory", headers=county.headers)
    assert r.status_code == 200
    html = r.text
    assert "医共体目录" in html and "青山县医共体" in html and "省胸痛专科联盟" in html
    # Opens on the user's own alliance: its members, grouped from the provincial level down.
    assert _listed_codes(html) == {"P1", "C1", "T1", "V1"}
    for name in ("省人民医院", "青山县人民医院", "白石镇卫生院", "白石村卫生室"):
        assert name in html
    assert "外县卫生院" not in html
    positions = [html.index(f'id="lvl-{lvl}"') for lvl in ("provincial", "secondary", "township", "village")]
    assert positions == sorted(positions)
    assert "牵头单位" in html and "片区医疗中心" in html


def test_filters_and_search_work_without_javascript(client, county: County) -> None:
    def codes(**params: object) -> set[str]:
        r = client.get("/directory", params={"alliance": ""} | params, headers=county.headers)
        assert r.status_code == 200
        return _listed_codes(r.text)

    assert codes() == {"P1", "C1", "T1", "V1", "X1"}
    assert codes(capability="ECG") == {"C1", "T1"}
    assert codes(q="外县") == {"X1"}
    assert codes(level="village") == {"V1"}
    assert codes(kind="general_hospital") == {"P1", "C1"}
    assert codes(alliance=county.other_alliance.id) == {"P1"}
    assert codes(alliance=county.alliance.id, level="township") == {"T1"}
    r = client.get("/directory", params={"alliance": "", "q": "没有这家"}, headers=county.headers)
    assert "没有符合条件的机构" in r.text


def test_bad_filters_and_unknown_records_get_the_error_page(client, county: County) -> None:
    r = client.get("/directory", params={"alliance": "abc"}, headers=county.headers)
    assert r.status_code == 422 and "alliance" in r.text
    assert client.get("/directory", params={"level": "hamlet"}, headers=county.headers).status_code == 422
    assert client.get("/directory", params={"alliance": "999"}, headers=county.headers).status_code == 404
    r = client.get("/directory/organisations/9999", headers=county.headers)
    assert r.status_code == 404 and "9999" in r.text


def test_htmx_search_returns_only_the_result_list(client, county: County) -> None:
    r = client.get("/directory", params={"alliance": county.alliance.id, "q": "白石"},
                   headers=county.headers | {"HX-Request": "true"})
    assert r.status_code == 200
    assert "<html" not in r.text and 'id="alliances-h"' not in r.text
    assert _listed_codes(r.text) == {"T1", "V1"}
    assert 'id="dir-status" role="status" class="muted" hx-swap-oob="true">本页 2 家' in r.text
    assert f"organisations.xlsx?alliance={county.alliance.id}&amp;q=" in r.text  # export follows the filters
    assert "HX-Request" in r.headers["vary"]
    # The whole page comes back for a history restore even though htmx asks.
    full = client.get("/directory", params={"q": "白石"}, headers=county.headers | {
        "HX-Request": "true", "HX-History-Restore-Request": "true"})
    assert "<html" in full.text


def test_organisation_page_shows_departments_capabilities_staff_and_teams(client, county: County) -> None:
    r = client.get(f"/directory/organisations/{county.county.id}", headers=county.headers)
    assert r.status_code == 200
    html = r.text
    for text in ("青山县人民医院", "心内科", "心血管内科", "张建国", "副主任医师", "检验", "青山县医共体",
                 "省医心内科专家工作室", "白石镇卫生院", "青山县人民路 1 号"):
        assert text in html, text
    town = client.get(f"/directory/organisations/{county.town.id}", headers=county.headers).text
    assert "白石镇家庭医生一队" in town and "张建国" in town and "白石村卫生室" in town
    province = client.get(f"/directory/organisations/{county.province.id}", headers=county.headers).text
    assert "省医心内科专家工作室" in province and "支持单位" in province and "省胸痛专科联盟" in province


def test_practitioner_and_team_pages(client, county: County) -> None:
    r = client.get(f"/directory/practitioners/{county.doctor.id}", headers=county.headers)
    assert r.status_code == 200
    for text in ("张建国", "副主任医师", "15 年", "青山县人民医院", "白石镇卫生院", "下沉坐诊", "白石镇家庭医生一队"):
        assert text in r.text, text
    r = client.get(f"/directory/teams/{county.team.id}", headers=county.headers)
    assert r.status_code == 200
    for text in ("白石镇家庭医生一队", "家庭医生团队", "张建国", "队长", "刘村医", "乡村医生"):
        assert text in r.text, text


def test_teams_page_filters_by_kind(client, county: County) -> None:
    r = client.get("/directory/teams", headers=county.headers)
    assert "白石镇家庭医生一队" in r.text and "省医心内科专家工作室" in r.text
    r = client.get("/directory/teams", params={"kind": "expert_studio"}, headers=county.headers)
    assert "省医心内科专家工作室" in r.text and "白石镇家庭医生一队" not in r.text
    assert "省人民医院" in r.text  # the experts' home hospital
    r = client.get("/directory/teams", params={"organisation": county.town.id}, headers=county.headers)
    assert "白石镇家庭医生一队" in r.text and "省医心内科专家工作室" not in r.text


def test_map_page_has_the_chart_and_a_table_fallback(client, county: County) -> None:
    r = client.get("/directory/map", headers=county.headers)
    assert r.status_code == 200
    html = r.text
    assert "/vendor/echarts/echarts.min.js" in html
    assert f'data-src="/api/v1/alliances/{county.alliance.id}/map"' in html
    table = html[html.index('id="map-table-h"'):]
    for name in ("省人民医院", "青山县人民医院", "白石镇卫生院", "白石村卫生室"):
        assert name in table
    assert "外县卫生院" not in html
    other = client.get("/directory/map", params={"alliance": county.other_alliance.id}, headers=county.headers)
    assert "省人民医院" in other.text and "青山县人民医院" not in other.text


def test_excel_export_holds_the_filtered_rows(client, county: County) -> None:
    r = client.get("/directory/organisations.xlsx", params={"alliance": county.alliance.id},
                   headers=county.headers)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/vnd.openxmlformats")
    sheet = load_workbook(io.BytesIO(r.content)).active
    rows = list(sheet.iter_rows(values_only=True))
    header = rows[0]
    assert header[:4] == ("编码", "名称", "级别", "类型")
    by_code = {row[0]: dict(zip(header, row, strict=True)) for row in rows[1:]}
    assert set(by_code) == {"P1", "C1", "T1", "V1"}
    assert by_code["T1"]["上级机构"] == "青山县人民医院"
    assert by_code["T1"]["片区医疗中心"] == "是"
    assert by_code["C1"]["服务与设备"] == "CT、DR 摄片、心电图、检验"
    assert "青山县医共体（牵头单位）" in by_code["C1"]["所属联盟"]
    assert by_code["P1"]["所属联盟"].count("（") == 2  # supporting one alliance, leading another
    assert by_code["V1"]["纬度"] == pytest.approx(29.23)

    everything = client.get("/directory/organisations.xlsx", params={"alliance": "", "capability": "MRI"},
                            headers=county.headers)
    rows = list(load_workbook(io.BytesIO(everything.content)).active.iter_rows(values_only=True))
    assert [row[1] for row in rows[1:]] == ["省人民医院"]


def test_english_labels_when_asked(client, county: County) -> None:
    client.cookies.set("lang", "en")
    r = client.get(f"/directory/practitioners/{county.doctor.id}", headers=county.headers)
    assert "Associate chief physician" in r.text and "Posts" in r.text


def test_patients_get_403(client, db, county: County) -> None:
    patient = f.patient(db)
    user = f.user(db, role=Role.PATIENT, patient=patient)
    db.commit()
    headers = f.bearer(client, user.username)
    for path in ("/directory", "/directory/map", "/directory/teams", "/directory/organisations.xlsx",
                 f"/directory/organisations/{county.county.id}"):
        assert client.get(path, headers=headers).status_code == 403, path


def test_strangers_are_sent_to_sign_in(client, county: County) -> None:
    r = client.get("/directory", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_health_bureau_reads_the_directory_pages(client, db, county: County) -> None:
    user = f.user(db, role=Role.HEALTH_BUREAU, with_practitioner=False)
    db.commit()
    r = client.get("/directory/map", headers=f.bearer(client, user.username))
    assert r.status_code == 200 and "青山县人民医院" in r.text
