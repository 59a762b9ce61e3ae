"""End to end: ``unclip serve`` in a subprocess, the page driven in Debian's Chromium (headless) by Playwright.

Chromium is the system package (``apt-get install chromium``; the README's test command runs
scripts/install_test_browser.sh); Playwright's own browser download is never used. Set
``UNCLIP_WEB_TEST_MODEL=shapes`` to drive the built-in model instead of the tiny test model, and
``UNCLIP_WEB_SCREENSHOT=docs/serve_screenshot.png`` to keep the screenshot there.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from playwright import sync_api as playwright_sync  # in the dev extra

expect = playwright_sync.expect
expect.set_options(timeout=90_000)  # generous: CI's two cores are shared with other work

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
AXE = Path(__file__).parent / "vendor" / "axe.min.js"


def chromium_path() -> str:
    for candidate in (os.environ.get("UNCLIP_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    pytest.fail("Chromium is not installed: bash scripts/install_test_browser.sh (or apt-get install -y chromium)")


@pytest.fixture(scope="module")
def server(start_server, tiny_model_dir):
    return start_server(os.environ.get("UNCLIP_WEB_TEST_MODEL", str(tiny_model_dir)), "--max-queue", "3")


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    with playwright_sync.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium_profile")),  # a fresh user-data dir
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
            permissions=["clipboard-read", "clipboard-write"],
        )
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.problems = []
        page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
        page.on("pageerror", lambda e: page.problems.append(str(e)))
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready='1']")
        yield page
        context.close()


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_generate_vary_interpolate_text_diff_by_keyboard_and_mouse(page, server, tmp_path):
    # keyboard: the skip link leads to the prompt; Enter generates
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Skip to the prompt")
    page.keyboard.press("Enter")
    expect(page.locator(":focus")).to_have_id("prompt")
    page.keyboard.type("a red circle")
    page.get_by_label("Images", exact=True).fill("2")
    page.get_by_label("Seed", exact=True).fill("7")
    page.get_by_label("Prompt", exact=True).press("Enter")
    cards = page.locator("#gallery .card")
    expect(cards).to_have_count(2)
    expect(page.locator("#gallery .seed")).to_have_text(["seed 7 · 1 of 2", "seed 7 · 2 of 2"])
    first_img = cards.first.locator("img")
    expect(first_img).to_have_js_property("complete", True)
    assert first_img.evaluate("img => img.naturalWidth") > 0

    # "copy as CLI command" names our CLI's real flags: running it gives the same pixels
    cards.nth(1).get_by_role("button", name="Copy as CLI command").click()
    command = page.locator("#cli").input_value()
    assert page.evaluate("() => navigator.clipboard.readText()") == command
    args = shlex.split(command)
    assert args[:2] == ["unclip", "generate"] and args[-2:] == ["-o", "out"]
    from unclip.cli.main import cli

    out = tmp_path / "cli_out"
    result = CliRunner().invoke(cli, [*args[1:-1], str(out), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    served = fetch(server.url + cards.nth(1).locator("img").get_attribute("src"))
    assert np.array_equal(pixels(served), pixels((out / "0001.png").read_bytes()))

    # vary this image (keyboard activation)
    cards.first.get_by_role("button", name="Vary this image").focus()
    page.keyboard.press("Enter")
    expect(cards).to_have_count(4)
    expect(cards.first.locator(".caption")).to_have_text("Variation")
    assert page.locator("#cli").input_value().startswith("unclip vary unclip-")

    # interpolation between two results
    cards.nth(2).get_by_role("button", name="Use as A").click()
    cards.nth(3).get_by_role("button", name="Use as B").click()
    page.get_by_label("Frames", exact=True).fill("3")
    page.get_by_role("button", name="Interpolate").click()
    expect(page.locator("#interp-strip img")).to_have_count(3)
    expect(page.locator("#interp-strip figcaption")).to_have_text(["θ = 0.00", "θ = 0.50", "θ = 1.00"])

    # text diff, then the slider moved by keyboard
    cards.nth(2).get_by_role("button", name="Text diff").click()
    expect(page.get_by_label("From (a caption of the image)", exact=True)).to_have_value("a red circle")
    page.get_by_label("To", exact=True).fill("a blue circle")
    page.get_by_role("button", name="Compute the text diff").click()
    slider = page.get_by_label("Edit strength θ", exact=True)
    expect(slider).to_be_enabled()
    expect(page.locator("#diff-image")).to_have_attribute("data-theta", "0.5")
    slider.focus()
    page.keyboard.press("Home")
    expect(page.locator("#diff-image")).to_have_attribute("data-theta", "0")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#theta-value")).to_have_text("θ = 0.2")
    expect(page.locator("#diff-image")).to_have_attribute("data-theta", "0.2")
    assert "--theta 0.5" in page.locator("#cli").input_value()

    # history: the generate request can be restored into the form
    page.get_by_label("Prompt", exact=True).fill("something else")
    page.locator("#history").get_by_role("button", name="Use again").first.click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a red circle")
    expect(page.get_by_label("Seed", exact=True)).to_have_value("7")

    shot = Path(os.environ.get("UNCLIP_WEB_SCREENSHOT") or tmp_path / "serve_screenshot.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] == 1280
    assert page.problems == []


def test_progress_queue_position_and_cancel(page, server):
    page.get_by_label("Prompt", exact=True).fill("a slow blue star")
    page.locator("summary").click()
    for label in ("Prior steps", "Decoder steps", "Upsampler steps"):
        page.get_by_label(label, exact=True).fill("200")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.get_by_role("button", name="Generate", exact=True).click()
    jobs = page.locator("#jobs .job")
    expect(jobs).to_have_count(2)
    waiting, running = (page.locator(f'[data-job="{jobs.nth(i).get_attribute("data-job")}"]') for i in (0, 1))
    expect(waiting).to_contain_text("position 1")  # the newest job is listed first, and waits
    expect(running).to_contain_text("step")  # the first one runs and reports its steps
    waiting.get_by_role("button", name="Cancel").click()
    expect(waiting).to_contain_text("cancelled")
    page.keyboard.press("Escape")  # cancels the latest job still active: the running one
    expect(running).to_contain_text("cancelled")
    for job in (waiting, running):
        job_id = job.get_attribute("data-job")
        assert json.loads(fetch(f"{server.url}/api/v1/jobs/{job_id}"))["status"] == "cancelled"
    expect(page.locator("#jobs .job")).to_have_count(0)
    page.get_by_role("button", name="Reset to the model's defaults").click()
    assert page.problems == []


def test_accessibility_checker_finds_no_serious_issue(page):
    page.evaluate(AXE.read_text())  # evaluated through the devtools protocol: the page's CSP stays on
    results = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    serious = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in results["violations"]
               if v["impact"] in ("serious", "critical")]  # fmt: skip
    assert serious == [], serious
    assert [v["id"] for v in results["violations"]] == []  # none at all, in fact


def test_api_docs_page_renders_locally(page, server):
    page.goto(server.url + "/docs")
    expect(page.locator(".op").first).to_be_visible()
    expect(page.locator(".op h2", has_text="/api/v1/images/text-diff")).to_have_count(1)
    assert page.locator("table caption", has_text="TextDiffRequest").count() == 1
    page.evaluate(AXE.read_text())
    results = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    assert [(v["id"], v["impact"]) for v in results["violations"]] == []
    assert page.problems == []
