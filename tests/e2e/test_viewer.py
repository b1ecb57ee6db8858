"""The web viewer in a real browser (Debian chromium at 1366x768): a township's CT study opens with its
first image on screen, frames scroll from the keyboard, the lung window re-renders the image, a distance
is measured in mm, and the patient's prior study from the county hospital opens side by side."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session

from tests.browser import SCREENSHOTS, sign_in
from tests.imaging import conftest as imaging_fixtures
from tests.imaging.conftest import ImagingSite
from tests.imaging.viewing_world import build, ingest_series

pytestmark = pytest.mark.e2e

PIXEL_SPACING_MM = 0.661468  # pydicom's CT_small
# H1's fixture (a township with a registered CT modality and its doctor), shared with tests/imaging.
imaging_site = imaging_fixtures.imaging_site


def canvas_stats(page: Page, pane: int = 0) -> dict[str, float]:
    """How much picture the pane's canvas holds: non-black pixels, distinct grey levels, and a checksum."""
    return page.evaluate("""(index) => {
        const canvas = document.querySelectorAll('.hv-pane')[index].querySelector('canvas');
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let lit = 0, sum = 0; const levels = new Set();
        for (let i = 0; i < data.length; i += 4) {
            if (data[i] > 8) { lit++; }
            levels.add(data[i]); sum = (sum * 31 + data[i]) % 1000000007;
        }
        return {lit: lit / (data.length / 4), levels: levels.size, sum: sum};
    }""", pane)


def test_open_scroll_window_measure_and_compare_a_prior(page: Page, db: Session, imaging_site: ImagingSite) -> None:
    world = build(db, imaging_site)
    prior = ingest_series(db, organisation_id=world.county.id, patient_id=world.resident_id, count=2,
                          study_date="20250601", description="胸部CT（县医院）")
    study = ingest_series(db, organisation_id=world.site.township.id, patient_id=world.resident_id, count=6,
                          description="胸部CT平扫")

    sign_in(page, "dongshan_doc")
    page.goto(f"/imaging/studies/{study.study_instance_uid}/viewer")

    # The first image is on screen (the <img> from the HTML, then the canvas), with real picture in it.
    page.wait_for_function("window.hrViewer && window.hrViewer.firstFrameAt !== null")
    page.wait_for_function("window.hrViewer.panes[0].drawn > 0")
    main = page.locator("#hv-pane-0")
    expect(main.locator("canvas")).to_be_visible()
    first = canvas_stats(page)
    assert first["lit"] > 0.2 and first["levels"] > 20
    expect(main.locator(".hv-frame-label")).to_have_text("图像 1 / 6")
    expect(page.locator("#hv-consult")).to_have_attribute("href", re.compile(r"^/teleconsult/\d+$"))
    expect(page.locator(".hv-series button")).to_have_count(1)

    # Keyboard scrolling: arrows one frame, PageDown ten (stopping at the last), Home back to the first.
    page.keyboard.press("ArrowDown")
    expect(main.locator(".hv-frame-label")).to_have_text("图像 2 / 6")
    page.wait_for_function("window.hrViewer.panes[0].entry.url === window.hrViewer.panes[0].wantedUrl")
    second = canvas_stats(page)
    assert second["sum"] != first["sum"]  # a different slice is drawn
    page.keyboard.press("PageDown")
    expect(main.locator(".hv-frame-label")).to_have_text("图像 6 / 6")
    page.keyboard.press("Home")
    expect(main.locator(".hv-frame-label")).to_have_text("图像 1 / 6")
    page.wait_for_function("window.hrViewer.panes[0].entry.url === window.hrViewer.panes[0].wantedUrl")
    before = canvas_stats(page)

    # The lung window: the frame is re-rendered by the server with window=-600,1500 and looks different.
    page.get_by_role("button", name="肺窗").click()
    expect(page.get_by_role("button", name="肺窗")).to_have_attribute("aria-pressed", "true")
    page.wait_for_function("window.hrViewer.panes[0].entry.url.indexOf('window=-600,1500') > 0")
    lung = canvas_stats(page)
    assert lung["sum"] != before["sum"] and lung["lit"] > 0.05
    expect(main.locator(".hv-wl")).to_have_text("C -600 W 1500")

    # A distance: two clicks 100 CSS pixels apart on the image, shown in mm on the image.
    page.locator("#hv-measure").click()
    box = main.locator(".hv-stage").bounding_box()
    assert box is not None
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.click(cx - 50, cy)
    page.mouse.click(cx + 50, cy)
    label = main.locator(".hv-measure-label")
    expect(label).to_have_text(re.compile(r"^\d+\.\d mm$"))
    scale = page.evaluate("window.hrViewer.panes[0].geometry().s / (window.devicePixelRatio || 1)")
    expected = 100 / scale * PIXEL_SPACING_MM
    assert abs(float(label.inner_text().split()[0]) - expected) < 1.0
    page.keyboard.press("Escape")

    # Help overlay.
    page.keyboard.press("?")
    expect(page.locator("#hv-help")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#hv-help")).to_be_hidden()

    # The prior from the county hospital opens in a second viewport, scrolled on its own.
    priors = page.locator("#hv-priors li")
    expect(priors).to_have_count(1)
    expect(priors.first).to_contain_text("青溪县人民医院")
    priors.first.get_by_role("button", name="并排对比").click()
    second_pane = page.locator("#hv-pane-1")
    expect(second_pane).to_be_visible()
    expect(second_pane.locator(".hv-pane-name")).to_contain_text("胸部CT（县医院）")
    page.wait_for_function("window.hrViewer.panes[1] && window.hrViewer.panes[1].drawn > 0")
    assert canvas_stats(page, 1)["lit"] > 0.2
    expect(second_pane.locator(".hv-frame-label")).to_have_text("图像 1 / 2")
    page.keyboard.press("ArrowDown")
    expect(second_pane.locator(".hv-frame-label")).to_have_text("图像 2 / 2")
    expect(main.locator(".hv-frame-label")).to_have_text("图像 1 / 6")
    assert prior.study_instance_uid in page.evaluate("window.hrViewer.panes[1].study.study_instance_uid")
    page.screenshot(path=str(SCREENSHOTS / "viewer_compare.png"))

    # Mouse wheel scrolls the main viewport again once it is active.
    main.locator(".hv-stage").hover()
    page.mouse.wheel(0, 120)
    expect(main.locator(".hv-frame-label")).to_have_text("图像 2 / 6")
