"""The HTTP API in-process (FastAPI's TestClient): results, PNG parameters, events, queue, limits, validation."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from unclip.pipeline import GenerationDefaults, bounds
from unclip.pipeline.options import MAX_PROMPT_CHARS
from unclip.web.app import create_app
from unclip.web.config import ServeConfig
from unclip.web.store import read_png_params

API = "/api/v1"


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def events_of(client, url: str, headers=None) -> list[tuple[int, str, dict]]:
    """(id, event, data) of a finished job's server-sent events."""
    out, current = [], {}
    with client.stream("GET", url, headers=headers or {}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(("id:", "event:", "data:")):
                key, value = line.split(":", 1)
                current[key] = value.strip()
            elif not line and "event" in current:
                out.append((int(current["id"]), current["event"], json.loads(current["data"])))
                current = {}
    return out


def test_health_and_config(client, tiny_pipe):
    health = client.get(f"{API}/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny-test" and health["queue"]["max_waiting"] == 4
    config = client.get(f"{API}/config").json()
    assert config["defaults"]["decoder_steps"] == tiny_pipe.defaults.decoder_steps == 2
    assert config["image_size"] == tiny_pipe.image_size == 32
    assert config["limits"]["max_images"] == 4 and config["limits"]["theta_range"] == list(bounds.THETA_RANGE)
    assert set(config["samplers"]) == {"ddpm", "ddim", "dpm++", "unclip"}


def test_generate_matches_the_pipeline_and_carries_its_parameters(client, tiny_pipe):
    body = {"prompt": "a red circle", "num_images_per_prompt": 2, "seed": 11, "decoder_guidance_scale": 3.0}
    job = client.post(f"{API}/images/generate?wait=true", json=body).json()
    assert job["status"] == "done" and len(job["images"]) == 2
    expected = tiny_pipe("a red circle", num_images_per_prompt=2, seed=11, decoder_guidance_scale=3.0)
    for i, info in enumerate(job["images"]):
        response = client.get(info["url"])
        assert response.headers["content-type"] == "image/png"
        assert np.array_equal(png_pixels(response.content), np.asarray(expected[i]))  # lossless, same pixels
        params = read_png_params(response.content)
        assert params["seed"] == info["seed"] == 11 and params["index"] == i == info["index"]
        assert params["prompt"] == "a red circle" and params["decoder_guidance_scale"] == 3.0
        assert params["decoder_steps"] == 2 and params["sampler"] == "ddpm"  # the model's defaults, filled in
        assert Image.open(io.BytesIO(response.content)).text["seed"] == "11"
    download = client.get(job["images"][0]["download_url"])
    assert "attachment" in download.headers["content-disposition"]
    assert client.get(f"{job['images'][0]['url']}/info").json()["params"]["seed"] == 11


def test_a_drawn_seed_is_reported_and_reproduces(client):
    first = client.post(f"{API}/images/generate?wait=true", json={"prompt": "a blue star", "num_images_per_prompt": 1})
    seed = first.json()["images"][0]["seed"]
    assert isinstance(seed, int) and seed >= 0
    again = client.post(
        f"{API}/images/generate?wait=true", json={"prompt": "a blue star", "num_images_per_prompt": 1, "seed": seed}
    )
    a, b = (client.get(r.json()["images"][0]["url"]).content for r in (first, again))
    assert np.array_equal(png_pixels(a), png_pixels(b))


def test_events_queued_progress_done_and_resume(client, tiny_pipe):
    response = client.post(f"{API}/images/generate", json={"prompt": "a green square", "num_images_per_prompt": 1})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == job["links"]["self"] == f"{API}/jobs/{job['id']}"
    events = events_of(client, job["links"]["events"])
    names = [name for _, name, _ in events]
    assert names[0] == "queued" and events[0][2]["position"] >= 1
    assert "started" in names and names[-1] == "done"
    progress = [(d["stage"], d["step"], d["total"]) for _, name, d in events if name == "progress"]
    d = tiny_pipe.defaults
    assert [p for p in progress if p[0] == "prior"] == [("prior", s, d.prior_steps) for s in (1, 2)]
    assert [p for p in progress if p[0] == "decoder"] == [("decoder", s, d.decoder_steps) for s in (1, 2)]
    assert [i for i, _, _ in events] == list(range(len(events)))
    assert events[-1][2]["status"] == "done" and len(events[-1][2]["images"]) == 1
    resumed = events_of(client, job["links"]["events"], headers={"Last-Event-ID": str(events[-3][0])})
    assert [i for i, _, _ in resumed] == [events[-2][0], events[-1][0]]
    assert client.get(job["links"]["self"]).json()["status"] == "done"


def test_variations_interpolate_and_text_diff(client, tiny_pipe):
    gen = client.post(f"{API}/images/generate?wait=true", json={"prompt": "a red circle", "num_images_per_prompt": 2})
    a, b = (i["id"] for i in gen.json()["images"])
    vary = client.post(f"{API}/images/variations?wait=true", json={"image": {"id": a}, "num_images": 3, "seed": 5})
    assert vary.json()["status"] == "done" and len(vary.json()["images"]) == 3
    source = Image.open(io.BytesIO(client.get(f"{API}/images/{a}").content)).convert("RGB")
    expected = tiny_pipe.vary(source, num_images=3, seed=5)
    got = png_pixels(client.get(vary.json()["images"][2]["url"]).content)
    assert np.array_equal(got, np.asarray(expected[2]))
    assert vary.json()["images"][0]["params"]["image_id"] == a

    uploaded = base64.b64encode(png_bytes(source)).decode()
    by_data = client.post(
        f"{API}/images/variations?wait=true",
        json={"image": {"data": f"data:image/png;base64,{uploaded}"}, "num_images": 3, "seed": 5},
    )
    assert np.array_equal(png_pixels(client.get(by_data.json()["images"][2]["url"]).content), got)

    frames = client.post(
        f"{API}/images/interpolate?wait=true", json={"image_a": {"id": a}, "image_b": {"id": b}, "num_frames": 3}
    ).json()
    assert [i["params"]["theta"] for i in frames["images"]] == [0.0, 0.5, 1.0]

    diff = client.post(
        f"{API}/images/text-diff?wait=true",
        json={"image": {"id": a}, "to_text": "a blue circle", "from_text": "a red circle", "thetas": [0, 0.2, 0.5]},
    ).json()
    assert diff["status"] == "done" and [i["params"]["theta"] for i in diff["images"]] == [0, 0.2, 0.5]
    expected = tiny_pipe.edit(source, to_text="a blue circle", from_text="a red circle", thetas=[0, 0.2, 0.5],
                              seed=diff["params"]["seed"])  # fmt: skip
    assert np.array_equal(png_pixels(client.get(diff["images"][1]["url"]).content), np.asarray(expected[1]))


def test_uploads_are_validated_like_the_cli(client):
    rgba = Image.new("RGBA", (40, 30), (200, 30, 30, 128))
    response = client.post(f"{API}/uploads", files={"file": ("x.png", png_bytes(rgba), "image/png")})
    assert response.status_code == 201
    info = response.json()
    assert info["kind"] == "upload" and (info["width"], info["height"]) == (40, 30)
    stored = Image.open(io.BytesIO(client.get(info["url"]).content))
    assert stored.mode == "RGB"  # alpha composited on white, as load_image does
    tiny = client.post(f"{API}/uploads", files={"file": ("t.png", png_bytes(Image.new("RGB", (4, 4))), "image/png")})
    assert tiny.status_code == 422 and "too small" in tiny.json()["detail"][0]["msg"]
    junk = client.post(f"{API}/uploads", files={"file": ("j.png", b"not an image", "image/png")})
    assert junk.status_code == 422 and junk.json()["detail"][0]["loc"] == ["body", "file"]


@pytest.mark.parametrize(
    "path,body,loc",
    [
        ("generate", {"prompt": ""}, ["body", "prompt"]),
        ("generate", {"prompt": "   "}, ["body", "prompt"]),
        ("generate", {"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, ["body", "prompt"]),
        ("generate", {"prompt": 3}, ["body", "prompt"]),
        ("generate", {"prompt": "a", "num_images_per_prompt": 0}, ["body", "num_images_per_prompt"]),
        ("generate", {"prompt": "a", "num_images_per_prompt": 5}, ["body", "num_images_per_prompt"]),  # > server's 4
        ("generate", {"prompt": "a", "num_images_per_prompt": True}, ["body", "num_images_per_prompt"]),
        ("generate", {"prompt": "a", "seed": -1}, ["body", "seed"]),
        ("generate", {"prompt": "a", "seed": 1.5}, ["body", "seed"]),
        ("generate", {"prompt": "a", "decoder_steps": 0}, ["body", "decoder_steps"]),
        ("generate", {"prompt": "a", "prior_steps": 201}, ["body", "prior_steps"]),  # > server's 200
        ("generate", {"prompt": "a", "sampler": "euler"}, ["body", "sampler"]),
        ("generate", {"prompt": "a", "sampler": "unclip", "upsampler_steps": 1}, ["body", "upsampler_steps"]),
        ("generate", {"prompt": "a", "decoder_guidance_scale": -1}, ["body", "decoder_guidance_scale"]),
        ("generate", {"prompt": "a", "eta": "much"}, ["body", "eta"]),
        ("generate", {"prompt": "a", "steps": 3}, ["body", "steps"]),
        ("variations", {"image": {"id": "nope"}}, ["body", "image", "id"]),
        ("variations", {"image": {}}, ["body", "image"]),
        ("variations", {"image": {"data": "%%%"}}, ["body", "image", "data"]),
        ("variations", {"image": {"data": base64.b64encode(b"junk").decode()}}, ["body", "image", "data"]),
        ("variations", {"image": {"id": "nope"}, "eta": -0.5}, ["body", "eta"]),
        ("interpolate", {"image_a": {"id": "x"}}, ["body", "image_b"]),
        ("interpolate", {"image_a": {"id": "x"}, "image_b": {"id": "y"}, "num_frames": 1}, ["body", "num_frames"]),
        ("interpolate", {"image_a": {"id": "x"}, "image_b": {"id": "y"}, "noise": "pink"}, ["body", "noise"]),
        ("text-diff", {"image": {"id": "x"}, "to_text": "a", "thetas": [0.1, 1.5]}, ["body", "thetas", 1]),
        ("text-diff", {"image": {"id": "x"}, "to_text": "a", "thetas": []}, ["body", "thetas"]),
        ("text-diff", {"image": {"id": "x"}, "to_text": ""}, ["body", "to_text"]),
    ],
)
def test_every_bad_field_is_a_422_naming_it(client, path, body, loc):
    response = client.post(f"{API}/images/{path}", json=body)
    assert response.status_code == 422, response.text
    assert loc in [d["loc"] for d in response.json()["detail"]], response.json()


def test_bad_json_and_unknown_resources(client):
    for body in (b"{not json", b"[1, 2]", b'"a prompt"', b"null", b"", b"\xff\xfe"):
        bad = client.post(f"{API}/images/generate", content=body, headers={"content-type": "application/json"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][0] == "body", (body, bad.text)
    assert client.get(f"{API}/images/0000").status_code == 404
    assert client.get(f"{API}/jobs/0000").status_code == 404
    assert client.get(f"{API}/jobs/0000/events").status_code == 404


def test_body_size_is_counted_while_reading(client):
    big = json.dumps({"prompt": "a", "pad": "x" * 70_000}).encode()
    declared = client.post(f"{API}/images/generate", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413

    def chunks():  # no Content-Length: the limit must be counted as the chunks arrive
        for _ in range(100):
            yield b"x" * 1024

    chunked = client.post(f"{API}/images/generate", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    upload = client.post(f"{API}/uploads", files={"file": ("big.png", b"\0" * 70_000, "image/png")})
    assert upload.status_code == 413
    assert client.get(f"{API}/health").status_code == 200


class BlockingPipe:
    """A stand-in pipeline whose text-to-image call runs until ``gate`` opens, reporting progress meanwhile."""

    image_size = 8

    def __init__(self) -> None:
        self.defaults = GenerationDefaults()
        self.gate = threading.Event()
        self.calls = 0

    def __call__(self, prompt, num_images_per_prompt=1, progress=None, **kw):
        self.calls += 1
        step = 0
        while not self.gate.wait(0.01):
            step += 1
            progress("decoder", min(step, 1000), 1000)
        return [Image.new("RGB", (8, 8), (step % 256, 0, 0))] * num_images_per_prompt


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_queue_positions_429_and_cancel():
    pipe = BlockingPipe()
    app = create_app(pipe, ServeConfig(model="fake", max_queue=2))
    with TestClient(app) as c:
        submit = lambda: c.post(f"{API}/images/generate", json={"prompt": "a", "num_images_per_prompt": 1})  # noqa: E731
        running = submit().json()
        wait_until(lambda: c.get(running["links"]["self"]).json()["status"] == "running")
        second, third = submit().json(), submit().json()
        assert (second["position"], third["position"]) == (1, 2)
        refused = submit()
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert c.get(f"{API}/health").json()["queue"] == {"running": 1, "waiting": 2, "max_waiting": 2}

        cancelled = c.post(second["links"]["cancel"]).json()
        assert cancelled["status"] == "cancelled"
        assert c.get(third["links"]["self"]).json()["position"] == 1  # moved up
        assert submit().status_code == 202  # a place is free again

        c.post(running["links"]["cancel"])  # stops at the next progress step, though the gate stays shut
        events = events_of(c, running["links"]["events"])
        assert events[-1][1] == "cancelled" and any(name == "progress" for _, name, _ in events)
        pipe.gate.set()
        wait_until(lambda: c.get(third["links"]["self"]).json()["status"] == "done")
        third_events = events_of(c, third["links"]["events"])
        assert [d["position"] for _, name, d in third_events if name == "queued"] == [2, 1]  # moved up: told so
        assert third_events[-1][1] == "done"
        assert pipe.calls == 3  # the running one (cancelled), third and the last one; never the cancelled second
        wait_until(lambda: c.get(f"{API}/health").json()["queue"]["waiting"] == 0)


def test_a_failing_job_is_an_error_event_and_the_server_goes_on():
    class Broken(BlockingPipe):
        def __call__(self, *a, **kw):
            raise RuntimeError("boom")

    with TestClient(create_app(Broken(), ServeConfig(model="broken"))) as c:
        job = c.post(f"{API}/images/generate?wait=true", json={"prompt": "a"}).json()
        assert job["status"] == "error" and "boom" in job["error"]
        events = events_of(c, job["links"]["events"])
        assert events[-1][1] == "error" and "boom" in events[-1][2]["message"]
        assert c.get(f"{API}/health").status_code == 200


def test_the_store_is_bounded(tiny_pipe):
    with TestClient(create_app(tiny_pipe, ServeConfig(model="t", store_images=3))) as c:
        ids = []
        for seed in range(3):
            job = c.post(f"{API}/images/generate?wait=true", json={"prompt": "a", "num_images_per_prompt": 2,
                                                                    "seed": seed})  # fmt: skip
            ids += [i["id"] for i in job.json()["images"]]
        kept = [c.get(f"{API}/images/{i}").status_code for i in ids]
        assert kept == [404, 404, 404, 200, 200, 200]
        assert c.get(f"{API}/health").json()["stored_images"] == 3


def test_openapi_docs_and_page_are_local(client):
    spec = client.get(f"{API}/openapi.json").json()
    for path in ("generate", "variations", "interpolate", "text-diff"):
        assert f"{API}/images/{path}" in spec["paths"]
    fields = spec["components"]["schemas"]["GenerateRequest"]["properties"]
    assert {"prompt", "num_images_per_prompt", "seed", "decoder_guidance_scale"} <= set(fields)
    thetas = spec["components"]["schemas"]["TextDiffRequest"]["properties"]["thetas"]["items"]
    assert (thetas["minimum"], thetas["maximum"]) == bounds.THETA_RANGE
    assert client.get("/redoc").status_code == 404  # FastAPI's CDN-based pages are off
    for url in ("/", "/docs", "/static/app.js", "/static/docs.js", "/static/app.css"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert "http://" not in response.text and "https://" not in response.text, url  # nothing fetched elsewhere
        assert "default-src 'self'" in response.headers["content-security-policy"]


def test_serve_command_defaults_to_loopback_and_reports_a_missing_model():
    from click.testing import CliRunner

    from unclip.cli.main import cli

    serve = cli.get_command(None, "serve")
    assert {p.name: p.default for p in serve.params}["host"] == "127.0.0.1"
    result = CliRunner().invoke(cli, ["serve", "--model", "/no/such/model"])
    assert result.exit_code == 1 and "/no/such/model" in result.output


def test_the_builtin_model_is_served_by_default():
    from unclip import UnCLIPPipeline

    assert ServeConfig().model == "shapes"
    pipe = UnCLIPPipeline.from_pretrained("shapes")
    with TestClient(create_app(pipe, ServeConfig())) as c:
        config = c.get(f"{API}/config").json()
        assert config["model"] == "shapes" and config["image_size"] == pipe.image_size
        assert config["defaults"]["decoder_steps"] == pipe.defaults.decoder_steps
        assert c.get("/").status_code == 200 and c.head("/").status_code == 200
