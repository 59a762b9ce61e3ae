"""Issue 15 item 9 (and the server's part of item 8): the HTTP API never answers 500, its limits are atomic,
its messages name the problem, and the limits it shows are the limits it applies (one source: pipeline.bounds)."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from unclip.pipeline import GenerationDefaults, bounds
from unclip.pipeline.builder import build_pipeline
from unclip.web.app import create_app
from unclip.web.config import ServeConfig

API = "/api/v1"
JSON = {"content-type": "application/json"}
FAST = GenerationDefaults(prior_steps=2, decoder_steps=2, upsampler_steps=2, inversion_steps=2, best_of=1)


@pytest.fixture(scope="module")
def pipe():
    """The untrained tiny pipeline (32 px, 2-step defaults)."""
    return build_pipeline("tiny", defaults=FAST)


@pytest.fixture(scope="module")
def client(pipe):
    """A server with lower limits than the hard ceilings; server errors come back as responses, not raised."""
    app = create_app(pipe, ServeConfig(model="edges", max_images=4, max_steps=50, max_body_bytes=256 * 1024))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def post_raw(client: TestClient, body: bytes, path: str = "generate"):
    return client.post(f"{API}/images/{path}", content=body, headers=JSON)


def assert_422_naming(response, loc: list, words: tuple[str, ...] = ()) -> str:
    """A 422 whose JSON detail has an entry at ``loc``; returns its message (checked for ``words``)."""
    assert response.status_code == 422, (response.status_code, response.text)
    entries = [d for d in response.json()["detail"] if d["loc"] == loc]
    assert entries, response.json()
    msg = entries[0]["msg"]
    for word in words:
        assert word in msg.lower(), msg
    return msg


# ---------------------------------------------------------------- bodies that used to be 500


def test_nan_in_json_body_is_422_not_500(client):
    """issue 15 item 9: a JSON NaN in a number field is a 422 naming the field (its error body used to fail)."""
    response = post_raw(client, b'{"prompt": "a", "decoder_guidance_scale": NaN}')
    assert_422_naming(response, ["body", "decoder_guidance_scale"], ("finite",))


def test_infinity_in_json_body_is_422_not_500(client):
    """issue 15 item 9: JSON Infinity / -Infinity in a field is a 422 naming the field."""
    assert_422_naming(post_raw(client, b'{"prompt": "a", "eta": Infinity}'), ["body", "eta"], ("finite",))
    response = post_raw(client, b'{"prompt": "a", "num_images_per_prompt": -Infinity}')
    assert_422_naming(response, ["body", "num_images_per_prompt"])


def test_1e309_in_json_body_is_422_not_500(client):
    """issue 15 item 9: 1e309 (a float overflow: inf) is a 422 naming the field, in any request kind."""
    assert_422_naming(post_raw(client, b'{"prompt": "a", "prior_guidance_scale": 1e309}'),
                      ["body", "prior_guidance_scale"])  # fmt: skip
    body = b'{"image": {"id": "x"}, "to_text": "a", "thetas": [0.1, 1e309]}'
    assert_422_naming(post_raw(client, body, "text-diff"), ["body", "thetas", 1])


def test_nan_prompt_is_422_not_500(client):
    """issue 15 item 9: NaN where a string belongs is a 422 naming the field, the echoed input made JSON-safe."""
    response = post_raw(client, b'{"prompt": NaN}')
    assert_422_naming(response, ["body", "prompt"])
    json.loads(response.text)  # strict JSON: no bare NaN in the answer


def test_lone_surrogate_in_prompt_is_422_not_500(client):
    """issue 15 item 9: a lone surrogate ("\\ud800") in a prompt is a 422 saying it is not valid Unicode."""
    response = post_raw(client, b'{"prompt": "a \\ud800 b"}')
    assert_422_naming(response, ["body", "prompt"], ("surrogate",))
    response.content.decode("utf-8")  # the answer itself is valid UTF-8


def test_lone_surrogate_in_text_diff_captions_is_422_not_500(client):
    """issue 15 item 9: lone surrogates in to_text / from_text are 422s naming the field."""
    body = b'{"image": {"id": "x"}, "to_text": "\\udc00", "from_text": "a"}'
    assert_422_naming(post_raw(client, body, "text-diff"), ["body", "to_text"], ("surrogate",))
    body = b'{"image": {"id": "x"}, "to_text": "a", "from_text": "b\\ud83d"}'
    assert_422_naming(post_raw(client, body, "text-diff"), ["body", "from_text"], ("surrogate",))


def test_deeply_nested_json_is_422_saying_why(client):
    """issue 15 item 9: JSON nested too deeply for the parser is a 422 that says so (was a bare 400)."""
    response = post_raw(client, b"[" * 100_000 + b"]" * 100_000)
    assert_422_naming(response, ["body"], ("nested",))


def test_huge_integer_is_422_saying_why(client):
    """issue 15 item 9: an integer of 5000 digits is a 422 that says the number is too long (was a bare 400)."""
    response = post_raw(client, b'{"prompt": "a", "seed": ' + b"9" * 5000 + b"}")
    assert_422_naming(response, ["body"], ("digits",))


def test_invalid_utf8_body_is_422_saying_why(client):
    """issue 15 item 9: a body that is not UTF-8 is a 422 that says so (was a bare 400)."""
    response = post_raw(client, b'{"prompt": "caf\xe9"}')
    assert_422_naming(response, ["body"], ("utf-8",))


# ---------------------------------------------------------------- uploads


def test_non_image_upload_names_the_file_and_the_problem(client):
    """issue 15 item 9: a non-image upload says what is wrong and names the file, never an object repr."""
    response = client.post(f"{API}/uploads", files={"file": ("notes.png", b"plain text", "image/png")})
    msg = assert_422_naming(response, ["body", "file"], ("not a readable image", "notes.png"))
    assert "object at 0x" not in msg and "BytesIO" not in msg


def test_non_image_data_field_names_the_field_and_the_problem(client):
    """issue 15 item 9: base64 data that is no image says so, naming the field, never an object repr."""
    body = json.dumps({"image": {"data": "bm90IGFuIGltYWdl"}}).encode()  # "not an image"
    msg = assert_422_naming(post_raw(client, body, "variations"), ["body", "image", "data"], ("not a readable image",))
    assert "object at 0x" not in msg and "BytesIO" not in msg


# ---------------------------------------------------------------- event streams


class IdlePipe:
    """A stand-in pipeline: the stream test only needs jobs that stay queued."""

    image_size = 8
    defaults = GenerationDefaults()


async def _open_streams(app, path: str, count: int, gate: asyncio.Event) -> tuple[list[int], list[asyncio.Task]]:
    """Open ``count`` event streams at once (the ASGI app called directly); their statuses, and their tasks."""

    def opener() -> tuple[asyncio.Future, asyncio.Task]:
        status: asyncio.Future = asyncio.get_running_loop().create_future()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
                 "headers": [(b"host", b"test")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}  # fmt: skip

        async def receive() -> dict:
            await gate.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start" and not status.done():
                status.set_result(message["status"])

        return status, asyncio.create_task(app(scope, receive, send))

    opened = [opener() for _ in range(count)]
    statuses = [await asyncio.wait_for(status, 10) for status, _ in opened]
    return statuses, [task for _, task in opened]


def test_event_stream_limit_is_checked_and_counted_atomically():
    """issue 15 item 9: 40 concurrent opens, max_streams 32: 32 streams and eight 429s; ended streams free slots."""
    app = create_app(IdlePipe(), ServeConfig(model="idle", max_streams=32))
    job = app.state.manager.submit("generate", {}, lambda progress: [])  # no worker started: it stays queued
    path = f"{API}/jobs/{job.id}/events"

    async def scenario() -> tuple[list[int], list[int]]:
        gate = asyncio.Event()
        first, tasks = await _open_streams(app, path, 40, gate)
        gate.set()  # every client disconnects
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        gate = asyncio.Event()
        second, tasks = await _open_streams(app, path, 32, gate)
        gate.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return first, second

    first, second = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert sorted(first) == [200] * 32 + [429] * 8
    assert second == [200] * 32  # every slot was given back when its stream ended


# ---------------------------------------------------------------- one source of truth for the limits


def test_web_config_ceilings_are_the_pipeline_bounds():
    """issue 15 item 8: the server's hard ceilings are unclip.pipeline.bounds, not a copy of their own."""
    from unclip.web import config

    for name in ("MAX_IMAGES", "MAX_STEPS", "MAX_GUIDANCE", "MAX_ETA", "MAX_BEST_OF", "MAX_FRAMES", "MAX_THETAS",
                 "MAX_SEED"):  # fmt: skip
        assert getattr(config, name) == getattr(bounds, name), name
    assert config.MAX_THETA == bounds.THETA_RANGE[1]
    ServeConfig(max_images=bounds.MAX_IMAGES, max_steps=bounds.MAX_STEPS)  # the full range may be served


def test_theta_range_of_the_api_is_the_cli_range(client):
    """issue 15 item 8: θ is THETA_RANGE (0-1) in the API as on the CLI: 1.0 passes validation, 1.01 does not."""
    spec = client.get(f"{API}/openapi.json").json()
    items = spec["components"]["schemas"]["TextDiffRequest"]["properties"]["thetas"]["items"]
    assert (items["minimum"], items["maximum"]) == bounds.THETA_RANGE
    assert client.get(f"{API}/config").json()["limits"]["theta_range"] == list(bounds.THETA_RANGE)
    ok = post_raw(client, b'{"image": {"id": "nope"}, "to_text": "a", "thetas": [0.0, 1.0]}', "text-diff")
    assert_422_naming(ok, ["body", "image", "id"])  # only the unknown image is refused, not θ = 1
    assert_422_naming(post_raw(client, b'{"image": {"id": "x"}, "to_text": "a", "thetas": [1.01]}', "text-diff"),
                      ["body", "thetas", 0])  # fmt: skip


def _maximum(prop: dict) -> float | None:
    """A schema property's maximum (also inside ``anyOf`` of an optional field)."""
    if "maximum" in prop:
        return prop["maximum"]
    return next((p["maximum"] for p in prop.get("anyOf", []) if "maximum" in p), None)


def test_openapi_limits_are_the_limits_the_server_applies(client):
    """issue 15 item 8: the /docs schema shows this server's max_images and max_steps (4 and 50), not 16 and 500."""
    schemas = client.get(f"{API}/openapi.json").json()["components"]["schemas"]
    shown = {
        ("GenerateRequest", "num_images_per_prompt"): 4, ("VariationsRequest", "num_images"): 4,
        ("InterpolateRequest", "num_frames"): 4, ("GenerateRequest", "prior_steps"): 50,
        ("GenerateRequest", "decoder_steps"): 50, ("GenerateRequest", "upsampler_steps"): 50,
        ("VariationsRequest", "decoder_steps"): 50, ("TextDiffRequest", "decoder_steps"): 50,
        ("GenerateRequest", "best_of"): bounds.MAX_BEST_OF, ("GenerateRequest", "eta"): bounds.MAX_ETA,
        ("GenerateRequest", "decoder_guidance_scale"): bounds.MAX_GUIDANCE,
        ("GenerateRequest", "seed"): float(bounds.MAX_SEED),  # FastAPI's OpenAPI models hold limits as floats
    }  # fmt: skip
    for (model, field), limit in shown.items():
        assert _maximum(schemas[model]["properties"][field]) == limit, (model, field)
    assert schemas["TextDiffRequest"]["properties"]["thetas"]["maxItems"] == 4  # thetas count as images
    limits = client.get(f"{API}/config").json()["limits"]
    assert (limits["max_images"], limits["max_steps"], limits["max_frames"], limits["max_thetas"]) == (4, 50, 4, 4)
    assert limits["max_seed"] == bounds.MAX_SEED


def test_text_diff_thetas_count_against_max_images(client):
    """issue 15 item 8: a text diff of more thetas than the server's max_images (4) is refused, naming thetas."""
    body = json.dumps({"image": {"id": "x"}, "to_text": "a", "thetas": [0.0, 0.1, 0.2, 0.3, 0.4]}).encode()
    assert_422_naming(post_raw(client, body, "text-diff"), ["body", "thetas"])


def test_seeds_up_to_2_64_minus_1_are_accepted_and_above_refused(client, pipe):
    """issue 15 item 9: seed 2**64 - 1 (the generator's largest) generates as the pipeline does; 2**64 is a 422."""
    seed = bounds.MAX_SEED
    body = {"prompt": "a red circle", "num_images_per_prompt": 1, "seed": seed}
    job = client.post(f"{API}/images/generate?wait=true", json=body)
    assert job.status_code == 200, job.text
    info = job.json()["images"][0]
    assert info["seed"] == seed
    got = Image.open(io.BytesIO(client.get(info["url"]).content)).convert("RGB")
    assert got.tobytes() == pipe("a red circle", num_images_per_prompt=1, seed=seed)[0].tobytes()
    assert_422_naming(client.post(f"{API}/images/generate", json={"prompt": "a", "seed": 2**64}), ["body", "seed"])
