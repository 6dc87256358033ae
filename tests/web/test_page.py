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


def test_the_marks_of_a_photograph_are_boxed_and_each_shows_its_matches(browser,
                                                                        scene_web_url,
                                                                        tmp_path):
    """A photograph of two registered marks (the scene generator's): the page draws a box
    over each mark found, lists them, and shows the matches of the one picked."""
    import random

    from PIL import Image

    from indexer.network.scenes import compose
    from tests.conftest import SAMPLES
    serials = ["86000000", "86000296"]
    scene = compose(random.Random(11), [Image.open(SAMPLES / "registry" / f"{s}.png")
                                        for s in serials])
    path = tmp_path / "photo.jpg"
    scene.image.save(path, quality=90)
    context = browser.new_context(viewport={"width": 1366, "height": 800})
    page = context.new_page()
    try:
        page.goto(scene_web_url)
        choose(page, path)
        page.get_by_role("button", name="Search", exact=True).click()
        boxes = page.locator("#mark-boxes .mark-box")
        playwright.expect(boxes).to_have_count(2)
        playwright.expect(page.locator("#marks-text")).to_contain_text("2 marks found")
        # each box drawn where its mark is, in the picture's scale
        img = page.locator("#preview").bounding_box()
        scale = img["width"] / scene.image.width
        drawn = [boxes.nth(i).bounding_box() for i in range(2)]
        for true in scene.boxes:
            tx, ty, tw, th = (v * scale for v in true)
            assert any(abs(d["x"] - img["x"] - tx) < 0.5 * tw + 4
                       and abs(d["y"] - img["y"] - ty) < 0.5 * th + 4 for d in drawn)
        picks = page.locator("#mark-list .mark-pick")
        playwright.expect(picks).to_have_count(2)
        picks.nth(1).click()
        playwright.expect(picks.nth(1)).to_have_class("mark-pick exists picked"
                                                       if "exists," in picks.nth(1).inner_text()
                                                       else "mark-pick absent picked")
        shown = page.locator("#matches .match").first.get_attribute("data-serial")
        second = picks.nth(1).inner_text()
        if "exists," in second:
            assert shown in second
        page.screenshot(path=str(tmp_path / "page.png"))
    finally:
        context.close()


def test_the_words_read_can_be_corrected_and_searched_again(page, engine):
    """A registered mark with words: the page shows the words read; words typed alone
    find the mark that bears them, and the answer says it was found by its words."""
    cat = engine.index.catalog
    texts = cat.texts(cat.all_ids())
    mark_id, text = next((i, t) for i, t in sorted(texts.items()) if len(t) >= 5)
    serial = cat.refs([mark_id])[mark_id].serial
    choose(page, next(p for i, p in cat.sources() if i == mark_id))
    page.get_by_role("button", name="Search", exact=True).click()
    playwright.expect(page.locator("#verdict-text")).to_contain_text(serial)
    playwright.expect(page.locator("#text")).to_have_value(text)
    playwright.expect(page.locator("#text-help")).to_contain_text("Words read in the picture")
    # The user types other words: a made-up word finds no registered mark...
    page.locator("#text").fill("Zorblaxquint")
    page.get_by_role("button", name="Search", exact=True).click()
    playwright.expect(page.locator("#text-help")).to_contain_text("words you typed")
    # ... and the mark's own words, typed, confirm it by its words.
    page.locator("#text").fill(text.lower())
    page.get_by_role("button", name="Search", exact=True).click()
    playwright.expect(page.locator("#verdict-text")).to_contain_text(serial)
    playwright.expect(page.locator("#matches .match").first).to_contain_text(f"“{text}”")
