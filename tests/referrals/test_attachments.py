"""Results and files sent with a referral: checked by content and size, stored durably, readable by the parties."""

from __future__ import annotations

import io

from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.core.config import get_settings
from healthrelay.referrals.models import ReferralAttachment
from tests import factories as f
from tests.referrals.conftest import World, sent_referral

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def _count(db: Session) -> int:
    return db.execute(select(func.count()).select_from(ReferralAttachment)).scalar_one()


def test_township_attaches_an_ecg_pdf_and_the_county_downloads_it(client, db: Session, world: World) -> None:  # noqa: ANN001
    referral = sent_referral(db, world)
    db.commit()
    village = f.bearer(client, "village_doc")
    up = client.post(f"/api/v1/referrals/{referral.id}/attachments", headers=village,
                     files={"file": ("心电图.pdf", PDF, "application/pdf")}, data={"description": "院前心电图"})
    assert up.status_code == 201, up.text
    body = up.json()
    assert body["content_type"] == "application/pdf" and body["size_bytes"] == len(PDF)
    stored = get_settings().data_dir / "attachments" / body["sha256"][:2] / body["sha256"]
    assert stored.read_bytes() == PDF
    county = f.bearer(client, "county_doc")
    detail = client.get(f"/api/v1/referrals/{referral.id}", headers=county).json()
    assert [a["filename"] for a in detail["attachments"]] == ["心电图.pdf"]
    got = client.get(f"/api/v1/referrals/attachments/{body['id']}", headers=county)
    assert got.status_code == 200 and got.content == PDF
    assert "filename*=UTF-8''%E5%BF%83" in got.headers["content-disposition"]
    # A doctor of a township that is not party to the referral cannot read it.
    other = f.bearer(client, "town_b_doc")
    assert client.get(f"/api/v1/referrals/attachments/{body['id']}", headers=other).status_code == 403


def test_wrong_type_empty_and_oversized_files_are_refused_by_name(client, db: Session, world: World,  # noqa: ANN001
                                                                  monkeypatch) -> None:  # noqa: ANN001
    referral = sent_referral(db, world)
    db.commit()
    village = f.bearer(client, "village_doc")
    url = f"/api/v1/referrals/{referral.id}/attachments"
    # An executable renamed to .pdf: the content decides, not the name.
    exe = client.post(url, headers=village,
                      files={"file": ("报告.pdf", b"MZ\x90\x00" + b"\x00" * 200, "application/pdf")})
    assert exe.status_code == 422 and "file type not allowed" in exe.json()["message"]
    assert "报告.pdf" in exe.json()["message"]
    empty = client.post(url, headers=village, files={"file": ("空.png", b"", "image/png")})
    assert empty.status_code == 422 and empty.json()["field_errors"][0]["field"] == "file"
    monkeypatch.setattr(get_settings(), "attachment_max_bytes", 1024)
    big = client.post(url, headers=village, files={"file": ("大.pdf", PDF + b"0" * 2048, "application/pdf")})
    assert big.status_code == 422 and "1 MB" not in big.text and "limit" in big.json()["message"]
    assert _count(db) == 0
    ok = client.post(url, headers=village, files={"file": ("x.png", _png(), "image/png")})
    assert ok.status_code == 201 and ok.json()["content_type"] == "image/png"


def test_the_upload_limit_applies_before_the_body_is_read(client, db: Session, world: World) -> None:  # noqa: ANN001
    referral = sent_referral(db, world)
    db.commit()
    village = f.bearer(client, "village_doc")
    limit = get_settings().attachment_max_bytes
    huge = client.post(f"/api/v1/referrals/{referral.id}/attachments", headers=village,
                       files={"file": ("大.pdf", PDF + b"0" * (limit + 200 * 1024), "application/pdf")})
    assert huge.status_code == 413 and huge.json()["code"] == "body_too_large"
    assert _count(db) == 0


def test_closed_referrals_and_strangers_cannot_attach(client, db: Session, world: World) -> None:  # noqa: ANN001
    from healthrelay.referrals import service

    referral = sent_referral(db, world)
    service.cancel(db, by=world.village_doctor, referral_id=referral.id, reason="患者拒绝转诊")
    db.commit()
    village = f.bearer(client, "village_doc")
    closed = client.post(f"/api/v1/referrals/{referral.id}/attachments", headers=village,
                         files={"file": ("a.pdf", PDF, "application/pdf")})
    assert closed.status_code == 409 and closed.json()["code"] == "referral_closed"
    live = sent_referral(db, world)
    db.commit()
    stranger = client.post(f"/api/v1/referrals/{live.id}/attachments", headers=f.bearer(client, "town_b_doc"),
                           files={"file": ("a.pdf", PDF, "application/pdf")})
    assert stranger.status_code == 403
    assert _count(db) == 0
