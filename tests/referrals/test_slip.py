"""The printable referral slip: a one-page A4 PDF whose text (Chinese included) is really in the file.

No pdftotext on this machine, and WeasyPrint packs font names into compressed object streams, so a
byte search for the font name finds nothing. The test therefore reads the PDF itself: it inflates the
streams, maps each font's glyph codes back to characters through the font's ToUnicode table, and
checks the text a reader would copy out of the document.
"""

from __future__ import annotations

import re
import zlib
from datetime import date

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.patients.identity import make_resident_id, mask_resident_id
from healthrelay.patients.models import IdentifierType, PatientIdentifier
from healthrelay.referrals import service
from tests.referrals.conftest import World, sent_referral
from tests.referrals.test_pages import login, switch

OBJ_RE = re.compile(rb"(\d+) 0 obj\s*")
REF_RE = re.compile(rb"/([A-Za-z0-9+_.-]+)\s*(\d+) 0 R")


class Pdf:
    """Just enough of a PDF reader for WeasyPrint's output: objects, object streams, fonts and text."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.objects: dict[int, bytes] = {}
        self.streams: dict[int, bytes] = {}
        self._read_objects()

    def _read_objects(self) -> None:
        pos = 0
        while (m := OBJ_RE.search(self.data, pos)) is not None:
            num, start = int(m.group(1)), m.end()
            head_end = self.data.find(b"endobj", start)
            stream_at = self.data.find(b"stream", start, head_end)
            if stream_at == -1:
                self.objects[num] = self.data[start:head_end]
                pos = head_end + 6
                continue
            head = self.data[start:stream_at]
            length = int(re.search(rb"/Length (\d+)", head).group(1))
            body_start = stream_at + len(b"stream") + (2 if self.data[stream_at + 6:stream_at + 8] == b"\r\n" else 1)
            raw = self.data[body_start:body_start + length]
            self.objects[num] = head
            self.streams[num] = zlib.decompress(raw) if b"/FlateDecode" in head else raw
            pos = self.data.find(b"endobj", body_start + length) + 6
        for num, head in list(self.objects.items()):
            if b"/ObjStm" in head:
                self._unpack(self.streams[num], head)

    def _unpack(self, data: bytes, head: bytes) -> None:
        n = int(re.search(rb"/N (\d+)", head).group(1))
        first = int(re.search(rb"/First (\d+)", head).group(1))
        numbers = [int(x) for x in data[:first].split()]
        pairs = [(numbers[i], numbers[i + 1]) for i in range(0, 2 * n, 2)]
        for k, (num, offset) in enumerate(pairs):
            end = pairs[k + 1][1] if k + 1 < n else len(data) - first
            self.objects[num] = data[first + offset:first + end]

    def _cmap(self, num: int) -> dict[str, str]:
        cmap: dict[str, str] = {}
        text = self.streams[num].decode("latin-1")
        for block in re.findall(r"beginbfchar(.*?)endbfchar", text, re.S):
            for src, dst in re.findall(r"<([0-9a-fA-F]+)>\s*<([0-9a-fA-F]+)>", block):
                cmap[src.lower()] = bytes.fromhex(dst).decode("utf-16-be")
        for block in re.findall(r"beginbfrange(.*?)endbfrange", text, re.S):
            for lo, hi, dst in re.findall(r"<([0-9a-fA-F]+)>\s*<([0-9a-fA-F]+)>\s*<([0-9a-fA-F]+)>", block):
                for i, code in enumerate(range(int(lo, 16), int(hi, 16) + 1)):
                    cmap[f"{code:0{len(lo)}x}"] = chr(int(dst, 16) + i)
        return cmap

    def fonts(self) -> dict[str, dict[str, str]]:
        """Resource name -> glyph code -> text, for every font that has a ToUnicode table."""
        found: dict[str, dict[str, str]] = {}
        for body in self.objects.values():
            for name, ref in REF_RE.findall(body):
                target = self.objects.get(int(ref), b"")
                to_unicode = re.search(rb"/ToUnicode (\d+) 0 R", target)
                if b"/Type /Font" in target and to_unicode:
                    found[name.decode()] = self._cmap(int(to_unicode.group(1)))
        return found

    def font_names(self) -> list[str]:
        return [m.decode() for body in self.objects.values() for m in re.findall(rb"/FontName /([^\s/<>]+)", body)]

    def embedded_font_files(self) -> int:
        return sum(len(re.findall(rb"/FontFile[23]? \d+ 0 R", body)) for body in self.objects.values())

    def page_count(self) -> int:
        counts = [int(m) for body in self.objects.values() if b"/Type /Pages" in body
                  for m in re.findall(rb"/Count (\d+)", body)]
        return max(counts)

    def text(self) -> str:
        fonts = self.fonts()
        out: list[str] = []
        for num, head in self.objects.items():
            if num not in self.streams or b"/ObjStm" in head or b"/Subtype" in head or b"/Length1" in head:
                continue
            content = self.streams[num]
            if b" Tf" not in content:
                continue
            cmap: dict[str, str] = {}
            for m in re.finditer(rb"/([A-Za-z0-9+_.-]+)\s+[\d.]+\s+Tf|\[(.*?)\]\s*TJ|<([0-9a-fA-F]*)>\s*Tj", content,
                                 re.S):
                if m.group(1):
                    cmap = fonts.get(m.group(1).decode(), {})
                    continue
                hexes = re.findall(rb"<([0-9a-fA-F]*)>", m.group(2)) if m.group(2) is not None else [m.group(3)]
                line = "".join(cmap.get(h[i:i + 4].decode().lower(), "?") for h in hexes
                               for i in range(0, len(h), 4))
                out.append(line)
        return "\n".join(out)


@pytest.fixture
def resident_id(db: Session, world: World) -> str:
    number = make_resident_id("421122", date(1956, 3, 8), 12, "F")
    db.add(PatientIdentifier(patient_id=world.patient.id, type=IdentifierType.RESIDENT_ID, value=number))
    db.commit()
    return number


def test_slip_is_one_a4_page_with_embedded_chinese_fonts_and_real_text(client, db: Session, world: World,  # noqa: ANN001
                                                                        resident_id: str) -> None:
    referral = sent_referral(db, world)
    service.accept(db, by=world.county_doctor, referral_id=referral.id, bed="心内科 12 床")
    db.commit()
    login(client, "county_doc")
    response = client.get(f"/referrals/{referral.id}/slip.pdf")
    assert response.status_code == 200 and response.headers["content-type"] == "application/pdf"
    assert response.content.startswith(b"%PDF")
    assert b"NotoSansCJK" not in response.content  # why this test parses the file instead of grepping it
    pdf = Pdf(response.content)
    assert pdf.page_count() == 1
    assert any(name.endswith("+Noto-Sans-CJK-SC") for name in pdf.font_names())
    assert any("Noto-Serif-CJK-SC" in name for name in pdf.font_names())
    assert pdf.embedded_font_files() >= 2
    text = pdf.text()
    for expected in (referral.number, "王秀英", "双向转诊单（上转）", "测试县人民医院", "东山镇卫生院", "心内科",
                     "I20.0", "不稳定型心绞痛", "胸痛 2 小时", "阿司匹林", "书面同意", "心内科 12 床", "回执",
                     "紧急", "160/95", mask_resident_id(resident_id)):
        assert expected in text, expected
    assert resident_id not in text  # masked on paper, whoever prints it


def test_printing_is_audited_as_a_read_of_the_patient_and_needs_access(client, db: Session,  # noqa: ANN001
                                                                        world: World) -> None:
    referral = sent_referral(db, world)
    db.commit()
    login(client, "village_doc")
    assert client.get(f"/referrals/{referral.id}/slip.pdf").status_code == 200
    db.expire_all()
    events = db.execute(select(AuditEvent).where(AuditEvent.action == "referral.slip")).scalars().all()
    assert [(e.patient_id, e.resource) for e in events] == [(world.patient.id, f"referral:{referral.id}")]
    switch(client, "outsider_doc")
    refused = client.get(f"/referrals/{referral.id}/slip.pdf")
    assert refused.status_code == 403 and not refused.content.startswith(b"%PDF")


def test_down_referral_slip_carries_the_care_plan_and_warning_signs(client, db: Session, world: World) -> None:  # noqa: ANN001
    up = sent_referral(db, world)
    service.accept(db, by=world.county_doctor, referral_id=up.id, bed="8 床")
    service.mark_arrived(db, by=world.county_doctor, referral_id=up.id)
    down = service.send_down(db, by=world.county_doctor, data=service.ReferralInput(
        patient_id=world.patient.id, to_organisation_id=world.town_a.id, to_team_id=world.team_a.id,
        diagnosis_code="I20.0", diagnosis_text="不稳定型心绞痛", consent_kind="verbal", parent_referral_id=up.id,
        care_plan={"diagnosis": "不稳定型心绞痛", "medicines": ["阿托伐他汀 20 mg qn"],
                   "follow_up": [{"due_on": "2026-12-01", "kind": "门诊复查"}], "warning_signs": ["胸痛超过 15 分钟"]}))
    db.commit()
    login(client, "village_doc")
    text = Pdf(client.get(f"/referrals/{down.id}/slip.pdf").content).text()
    for expected in (down.number, "双向转诊单（下转）", "下转康复计划", "阿托伐他汀 20 mg qn", "2026-12-01 门诊复查",
                     "胸痛超过 15 分钟", "家庭医生团队"):
        assert expected in text, expected
