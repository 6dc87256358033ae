"""The page in a real browser (Playwright driving Chromium) against the real server."""
from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import side_by_side
from tests.web.conftest import UNREGISTERED, plain

# Debian's chromium: Playwright cannot download its own browser on these machines. CI
# (.ci/run) installs it and sets REQUIRE_BROWSER, so there these tests fail, not skip.
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if os.environ.get("REQUIRE_BROWSER"):
    assert CHROMIUM, "REQUIRE_BROWSER is set and there is no chromium on the PATH"
    from playwright import sync_api as playwright
else:
    playwright = pytest.importorskip("playwright.sync_api")
    pytestmark = pytest.mark.skipif(not CHROMIUM, reason="no Chromium (apt-get install chromium)")
# Flags that keep a headless Chromium from reaching out on a closed network.
QUIET = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=QUIET, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, web_url):
    context = browser.new_context(viewport={"width": 1366, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(web_url)
    playwright.expect(page.locator("#index-info")).to_contain_text("registered marks")
    yield page
    context.close()
    assert not errors, errors


def choose(page, path):
    page.set_input_files("#image", str(path))
    playwright.expect(page.locator("#preview")).to_have_js_property("complete", True)


def test_a_registered_mark_is_found(page):
    q = plain("known")
    choose(page, q["path"])
    page.get_by_role("button", name="Search", exact=True).click()
    verdict = page.locator("#verdict-text")
    playwright.expect(verdict).to_have_text(
        f"Trade Mark Existed! - serial number: {q['expected_serial']}")
    first = page.locator("#matches .match").first
    playwright.expect(first).to_have_attribute("data-serial", q["expected_serial"])
    # its thumbnail loaded from the app
    playwright.expect(first.locator("img")).to_have_js_property("complete", True)
    assert first.locator("img").evaluate("i => i.naturalWidth") > 0
    # opened larger, and closed again from the keyboard
    first.click()
    playwright.expect(page.locator("#viewer")).to_be_visible()
    playwright.expect(page.locator("#viewer-title")).to_contain_text(q["expected_serial"])
    page.keyboard.press("Escape")
    playwright.expect(page.locator("#viewer")).to_be_hidden()


def test_an_unregistered_mark_is_not_found(page):
    choose(page, plain("unknown", UNREGISTERED)["path"])
    page.locator("#k").fill("3")
    page.get_by_role("button", name="Search", exact=True).click()
    playwright.expect(page.locator("#verdict-text")).to_have_text("Trade Mark Not Existed!")
    playwright.expect(page.locator("#matches .match")).to_have_count(3)


def test_a_crop_box_searches_only_the_mark(page, tmp_path):
    """Two marks side by side; dragging a box over the registered one finds it."""
    q = plain("known", 1)
    canvas, (x, y, w, h) = side_by_side(plain("unknown", 0)["path"], q["path"], gap=30,
                                        fit=300)
    path = tmp_path / "two-marks.png"
    canvas.save(path)
    choose(page, path)
    img = page.locator("#preview").bounding_box()
    scale = img["width"] / canvas.width
    page.mouse.move(img["x"] + (x - 5) * scale, img["y"] + 1)  # from the gap
    page.mouse.down()
    page.mouse.move(img["x"] + (x + w - 1) * scale, img["y"] + (y + h - 1) * scale, steps=5)
    page.mouse.up()
    playwright.expect(page.locator("#region-text")).to_contain_text("Searching the box")
    page.get_by_role("button", name="Search", exact=True).click()
    playwright.expect(page.locator("#verdict-text")).to_have_text(
        f"Trade Mark Existed! - serial number: {q['expected_serial']}")
    # and the whole picture again, from the keyboard
    page.get_by_role("button", name="Use the whole image").click()
    playwright.expect(page.locator("#region-text")).to_have_text("Searching the whole image.")


def test_filters_keep_the_answer_to_the_marks_that_pass(page):
    """The index's manifest columns appear as filters; a dead-marks-only search of a live
    registered mark lists dead marks only, and says among how many."""
    q = plain("known")
    choose(page, q["path"])
    status = page.locator("#filter-status")
    playwright.expect(status).to_be_visible()
    status.fill("dead")
    page.get_by_role("button", name="Search", exact=True).click()
    playwright.expect(page.locator("#verdict-detail")).to_contain_text(
        "among the 57 registered marks that pass the filters")
    cards = page.locator("#matches .match .meta")
    playwright.expect(cards.first).to_contain_text("status: dead")
    assert all("status: dead" in t for t in cards.all_inner_texts())
    status.fill("")
    page.get_by_role("button", name="Search", exact=True).click()
    playwright.expect(page.locator("#verdict-text")).to_have_text(
        f"Trade Mark Existed! - serial number: {q['expected_serial']}")


def test_a_file_that_is_not_an_image_says_so(page, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not a picture at all")
    page.set_input_files("#image", str(bad))
    page.get_by_role("button", name="Search", exact=True).click()
    playwright.expect(page.locator("#error")).to_contain_text("INVALID_ARGUMENT")
    playwright.expect(page.locator("#verdict")).to_be_hidden()


def test_the_page_is_usable_by_keyboard(page):
    """Tab reaches the picker, the options and the search button in order."""
    page.locator("body").focus()
    seen = []
    for _ in range(8):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    assert seen.index("drop") < seen.index("k") < seen.index("threshold")
