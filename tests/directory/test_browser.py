"""Directory pages in a real browser (Debian Chromium): the live search swaps only the result list,
and the alliance map is drawn from coordinates without tiles, with tooltips and clickable points."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from healthrelay.accounts.models import Role
from healthrelay.directory import service
from tests import factories as f

pytestmark = pytest.mark.e2e


@pytest.fixture
def browser_page(browser, live_server: str) -> Iterator[object]:  # noqa: ANN001
    """The run's one Chromium (a second Playwright in the same thread is refused), with outside requests refused."""
    context = browser.new_context(base_url=live_server, viewport={"width": 1366, "height": 768}, locale="zh-CN")
    context.set_default_timeout(15_000)
    page = context.new_page()
    # Any request leaving loopback would mean the map needs internet tiles; refuse it outright.
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(live_server)
                  else route.abort())
    yield page
    context.close()


def test_map_draws_members_and_opens_an_organisation_on_click(db, browser_page) -> None:
    alliance = service.create_alliance(db, code="QS", name="青山县医共体", kind="county_community")
    county = service.create_organisation(db, code="C1", name="青山县人民医院", level="secondary",
                                         kind="general_hospital", latitude=29.10, longitude=115.20,
                                         capabilities=["CT", "ECG"])
    town = service.create_organisation(db, code="T1", name="白石镇卫生院", level="township", kind="township_centre",
                                       parent_id=county.id, latitude=29.30, longitude=115.50, capabilities=["ECG"])
    service.add_member(db, alliance_id=alliance.id, organisation_id=county.id, role="lead")
    service.add_member(db, alliance_id=alliance.id, organisation_id=town.id)
    user = f.user(db, role=Role.CLINICIAN, organisation=town, username="map_viewer")
    db.commit()
    page = browser_page
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    _sign_in(page, user.username, "/directory/map")
    page.wait_for_selector("#alliance-map[data-ready='1'] canvas")
    assert errors == []

    # Where ECharts placed the township, in page pixels.
    x, y = page.evaluate("""([lng, lat]) => {
        const el = document.getElementById('alliance-map');
        const chart = echarts.getInstanceByDom(el);
        const [px, py] = chart.convertToPixel({gridIndex: 0}, [lng, lat]);
        const box = el.getBoundingClientRect();
        return [box.left + px, box.top + py];
    }""", [115.50, 29.30])
    page.mouse.move(x, y)
    tooltip = page.locator("div", has_text="白石镇卫生院").filter(has_text="心电图").last
    tooltip.wait_for()
    assert "乡镇卫生院" in tooltip.inner_text()
    page.mouse.click(x, y)
    page.wait_for_url(f"**/directory/organisations/{town.id}")
    assert page.locator("h1").inner_text() == "白石镇卫生院"
    assert errors == []


def _sign_in(page, username: str, target: str) -> None:
    page.goto(f"/login?next={target}")
    page.fill("#username", username)
    page.fill("#password", f.PASSWORD)
    page.press("#password", "Enter")
    page.wait_for_url(f"**{target}")


def test_search_updates_the_list_while_typing(db, browser_page) -> None:
    alliance = service.create_alliance(db, code="QS", name="青山县医共体", kind="county_community")
    for code, name in (("T1", "白石镇卫生院"), ("T2", "黄泥镇卫生院"), ("T3", "白马乡卫生院")):
        org = service.create_organisation(db, code=code, name=name, level="township", kind="township_centre")
        service.add_member(db, alliance_id=alliance.id, organisation_id=org.id)
    f.user(db, role=Role.HEALTH_BUREAU, username="bureau_viewer", with_practitioner=False)
    db.commit()
    page = browser_page
    _sign_in(page, "bureau_viewer", "/directory")
    page.evaluate("window.__stayed = true")  # survives only if the page is not reloaded
    rows = page.locator("#directory-results .dir-code")
    assert rows.count() == 3
    page.locator("#dir-q").press_sequentially("白")
    page.wait_for_function("document.querySelectorAll('#directory-results .dir-code').length === 2")
    assert sorted(rows.all_inner_texts()) == ["T1", "T3"]
    assert page.locator("#dir-status").inner_text() == "本页 2 家"
    assert "q=%E7%99%BD" in page.url  # the address follows, so the result can be bookmarked
    page.select_option("#dir-level", "village")
    page.wait_for_selector("#directory-results >> text=没有符合条件的机构")
    assert page.evaluate("window.__stayed") is True
