"""End to end: ``unclip serve`` in a subprocess, the page driven in Debian's Chromium (headless) by Playwright.

Chromium is the system package (``apt-get install chromium``; the README's test command runs
scripts/install_test_browser.sh); Playwright's own browser download is never used. Set
``UNCLIP_WEB_TEST_MODEL=shapes`` to drive the built-in model instead of the tiny test model, and
``UNCLIP_WEB_SCREENSHOT=docs/serve_screenshot.png`` to keep the screenshot there.
"""

from __future__ import annotations

import base64
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
    # The two requests' answers arrive in reverse order (the server queues them in order): the list must
    # still follow the server's order, newest first.
    held = []

    def answer_second_first(route):
        response = route.fetch()
        if not held:
            held.append((route, response))
            return
        route.fulfill(response=response)
        first, first_response = held.pop()
        first.fulfill(response=first_response)

    page.route("**/api/v1/images/generate", answer_second_first)
    page.get_by_role("button", name="Generate", exact=True).click()
    page.get_by_role("button", name="Generate", exact=True).click()
    jobs = page.locator("#jobs .job")
    expect(jobs).to_have_count(2)
    page.unroute("**/api/v1/images/generate")
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


def newest_images(page, count: int) -> list[str]:
    """The srcs of the ``count`` newest gallery images, each checked to have loaded."""
    images = page.locator("#gallery .card img")
    for i in range(count):
        expect(images.nth(i)).to_have_js_property("complete", True)
        assert images.nth(i).evaluate("img => img.naturalWidth") > 0
    return [images.nth(i).get_attribute("src") for i in range(count)]


def run_cli(command: str, folder: Path, monkeypatch) -> Path:
    """Run the page's ``unclip ...`` command in ``folder`` (where its input files are); returns its ``out``."""
    from unclip.cli.main import cli

    args = shlex.split(command)
    assert args[-2:] == ["-o", "out"], command
    monkeypatch.chdir(folder)
    result = CliRunner().invoke(cli, [*args[1:], "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return folder / "out"


def post_body(page, path: str, click) -> dict:
    """The JSON body of the POST to ``/api/v1/images/{path}`` that ``click()`` makes the page send."""
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith(f"/api/v1/images/{path}")) as request:
        click()
    return request.value.post_data_json


def test_negative_prompt_is_sent_recorded_and_in_the_cli_command(page, server):
    page.get_by_label("Prompt", exact=True).fill("a red circle")
    page.get_by_label("Negative prompt", exact=True).fill("a blue star")
    page.get_by_label("Images", exact=True).fill("1")
    before = page.locator("#gallery .card").count()
    body = post_body(page, "generate", page.get_by_role("button", name="Generate", exact=True).click)
    assert body["prompt"] == "a red circle" and body["negative_prompt"] == "a blue star"
    expect(page.locator("#gallery .card")).to_have_count(before + 1)
    (src,) = newest_images(page, 1)
    assert json.loads(fetch(f"{server.url}{src}/info"))["params"]["negative_prompt"] == "a blue star"
    assert "--negative 'a blue star'" in page.locator("#cli").input_value()
    page.get_by_label("Negative prompt", exact=True).fill("")  # an empty field sends none
    body = post_body(page, "generate", page.get_by_role("button", name="Generate", exact=True).click)
    assert "negative_prompt" not in body
    expect(page.locator("#gallery .card")).to_have_count(before + 2)
    assert page.problems == []


def test_mix_of_a_caption_and_an_image(page, server, tmp_path, monkeypatch):
    source = tmp_path / "mix_source.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(source)
    cards = page.locator("#gallery .card")
    before = cards.count()
    page.get_by_label("Add your own image", exact=True).set_input_files(str(source))
    expect(cards).to_have_count(before + 1)
    upload = cards.first
    image_id = upload.get_attribute("data-image")
    page.get_by_role("button", name="Add a caption").click()
    expect(page.locator(":focus")).to_have_attribute("type", "text")  # the new caption's field
    page.keyboard.type("a blue star")
    upload.get_by_role("button", name="Add to mix").click()
    expect(page.locator("#mix-items li")).to_have_count(2)
    page.get_by_label("Weight 1", exact=True).fill("0.3")
    page.get_by_label("Weight 2", exact=True).fill("0.7")
    page.get_by_label("Images", exact=True).fill("2")
    page.get_by_label("Seed", exact=True).fill("7")
    body = post_body(page, "mix", page.get_by_role("button", name="Mix", exact=True).click)
    assert body["items"] == [{"text": "a blue star"}, {"image": {"id": image_id}}]
    assert body["weights"] == [0.3, 0.7] and body["num_images"] == 2 and body["seed"] == 7
    expect(cards).to_have_count(before + 3)
    expect(cards.nth(0).locator(".caption")).to_have_text("Mix")
    expect(cards.nth(1).locator(".caption")).to_have_text("Mix")
    srcs = newest_images(page, 2)
    assert json.loads(fetch(f"{server.url}{srcs[1]}/info"))["params"]["items"][1] == {"image_id": image_id}

    # the command shown makes the same images from the downloaded input
    command = page.locator("#cli").input_value()
    assert command.startswith(f"unclip mix 'a blue star' unclip-{image_id}.png -n 2 --weights '0.3 0.7'"), command
    (tmp_path / f"unclip-{image_id}.png").write_bytes(fetch(f"{server.url}/api/v1/images/{image_id}"))
    out = run_cli(command, tmp_path, monkeypatch)
    assert np.array_equal(pixels(fetch(server.url + srcs[1])), pixels((out / "0001.png").read_bytes()))
    assert page.problems == []


def test_inpaint_with_a_mask_painted_by_mouse(page, server, tmp_path, monkeypatch):
    width, height, brush = 40, 32, 4  # not square: the mask has the image's own pixel size
    source = tmp_path / "inpaint_source.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(source)
    page.get_by_label("Load an image to inpaint", exact=True).set_input_files(str(source))
    canvas = page.locator("#mask-canvas")
    expect(page.locator("#inpaint-stage")).to_be_visible()
    expect(canvas).to_have_js_property("width", width)
    expect(canvas).to_have_js_property("height", height)
    image_id = page.locator("#gallery .card").first.get_attribute("data-image")
    page.get_by_label("Brush size (image pixels)", exact=True).fill(str(brush))
    page.get_by_label("What to paint there", exact=True).fill("a blue star")
    page.get_by_label("Images", exact=True).fill("2")

    def at(x: float, y: float) -> tuple[float, float]:  # image pixels -> viewport coordinates, where it is now
        box = canvas.bounding_box()
        return box["x"] + x * box["width"] / width, box["y"] + y * box["height"] / height

    (x0, y), x1 = (10.5, 16.5), 30.5

    def stroke() -> None:
        canvas.scroll_into_view_if_needed()
        page.mouse.move(*at(x0, y))
        page.mouse.down()
        page.mouse.move(*at(x1, y), steps=8)
        page.mouse.up()

    stroke()
    page.get_by_role("button", name="Clear the mask").click()  # cleared: nothing to send
    page.get_by_role("button", name="Inpaint", exact=True).click()
    expect(page.locator("#inpaint-error")).to_have_text("Paint over the part to repaint first.")
    stroke()
    cards = page.locator("#gallery .card")
    before = cards.count()
    body = post_body(page, "inpaint", page.get_by_role("button", name="Inpaint", exact=True).click)
    assert body["image"] == {"id": image_id} and body["prompt"] == "a blue star" and body["num_images"] == 2
    assert body["mask"]["data"].startswith("data:image/png;base64,")
    mask_png = base64.b64decode(body["mask"]["data"].split(",", 1)[1])
    mask = pixels(mask_png)
    assert mask.shape == (height, width, 3) and set(np.unique(mask)) <= {0, 255}
    # distance of each pixel's centre to the stroke: white on it, black away from it
    yy, xx = np.mgrid[:height, :width] + 0.5
    distance = np.hypot(xx - np.clip(xx, x0, x1), yy - y)
    white = mask[..., 0] == 255
    assert white[distance < brush / 2 - 0.75].all() and not white[distance > brush / 2 + 0.75].any()

    expect(cards).to_have_count(before + 2)
    expect(cards.first.locator(".caption")).to_have_text("Inpainted: a blue star")
    expect(page.locator("#inpaint-strip img")).to_have_count(2)
    srcs = newest_images(page, 2)
    # outside the mask the results keep the source (its centre square: what the 32 px model sees)
    left = (width - height) // 2
    crop = np.asarray(Image.open(source).convert("RGB"))[:, left : left + height]
    keep = ~white[:, left : left + height]
    for src in srcs:
        assert np.array_equal(pixels(fetch(server.url + src))[keep], crop[keep])
    expect(page.locator("#mask-download")).to_be_visible()

    # the command shown, run on the downloaded image and mask, makes the same images
    command = page.locator("#cli").input_value()
    assert command.startswith(f"unclip inpaint unclip-{image_id}.png mask.png 'a blue star' -n 2"), command
    (tmp_path / f"unclip-{image_id}.png").write_bytes(fetch(f"{server.url}/api/v1/images/{image_id}"))
    (tmp_path / "mask.png").write_bytes(mask_png)
    out = run_cli(command, tmp_path, monkeypatch)
    assert np.array_equal(pixels(fetch(server.url + srcs[1])), pixels((out / "0001.png").read_bytes()))
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
