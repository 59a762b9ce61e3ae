"""The HTTP API of negative prompts, mixing and inpainting in-process (FastAPI's TestClient): the same pixels
as the pipeline, the parameters recorded, and every bad input a one-line 4xx naming its field, never a 500."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from unclip.pipeline import GenerationDefaults
from unclip.web.app import create_app
from unclip.web.config import ServeConfig
from unclip.web.store import read_png_params

API = "/api/v1"


@pytest.fixture(scope="module")
def source(client) -> tuple[str, Image.Image]:
    """A generated 32 px image: its id and pixels."""
    job = client.post(f"{API}/images/generate?wait=true", json={"prompt": "a red circle", "num_images_per_prompt": 1,
                                                                 "seed": 3}).json()  # fmt: skip
    info = job["images"][0]
    return info["id"], Image.open(io.BytesIO(client.get(info["url"]).content)).convert("RGB")


def png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int], mode: str = "L") -> Image.Image:
    mask = Image.new(mode, size, 0)
    mask.paste(255 if mode == "L" else (255, 255, 255, 255), box)
    return mask


def results(client, job: dict) -> list[np.ndarray]:
    assert job["status"] == "done", job
    return [np.asarray(Image.open(io.BytesIO(client.get(i["url"]).content)).convert("RGB")) for i in job["images"]]


class RecordingPipe:
    """A stand-in pipeline that records the keyword arguments of its text-to-image calls."""

    image_size = 8

    def __init__(self) -> None:
        self.defaults = GenerationDefaults()
        self.calls: list[dict] = []

    def __call__(self, prompt, num_images_per_prompt=1, **kw):
        self.calls.append(kw)
        return [Image.new("RGB", (8, 8))] * num_images_per_prompt


def test_generate_passes_the_negative_prompt(client, tiny_pipe):
    body = {"prompt": "a red circle", "num_images_per_prompt": 2, "seed": 4}
    job = client.post(f"{API}/images/generate?wait=true", json={**body, "negative_prompt": "a blue star"}).json()
    expected = tiny_pipe("a red circle", num_images_per_prompt=2, seed=4, negative_prompt="a blue star")
    got = results(client, job)
    assert all(np.array_equal(g, np.asarray(e)) for g, e in zip(got, expected))
    assert job["params"]["negative_prompt"] == "a blue star"
    assert read_png_params(client.get(job["images"][0]["url"]).content)["negative_prompt"] == "a blue star"

    pipe = RecordingPipe()  # the untrained tiny decoder ignores its conditioning: check what the pipeline is given
    with TestClient(create_app(pipe, ServeConfig(model="fake"))) as c:
        for negative in ("a blue star", None):
            extra = {} if negative is None else {"negative_prompt": negative}
            assert c.post(f"{API}/images/generate?wait=true", json={**body, **extra}).json()["status"] == "done"
    assert [call["negative_prompt"] for call in pipe.calls] == ["a blue star", None]


def test_mix_of_a_caption_and_an_image(client, tiny_pipe, source):
    image_id, image = source
    body = {"items": [{"text": "a blue star"}, {"image": {"id": image_id}}], "weights": [0.3, 0.7], "num_images": 2,
            "seed": 5, "decoder_guidance_scale": 3.0}  # fmt: skip
    job = client.post(f"{API}/images/mix?wait=true", json=body).json()
    expected = tiny_pipe.mix(["a blue star", image], weights=[0.3, 0.7], num_images=2, seed=5,
                             decoder_guidance_scale=3.0)  # fmt: skip
    got = results(client, job)
    assert len(got) == 2 and all(np.array_equal(g, np.asarray(e)) for g, e in zip(got, expected))
    params = job["params"]
    assert job["kind"] == "mix" and params["items"] == ["a blue star", {"image_id": image_id}]
    assert params["weights"] == [0.3, 0.7] and params["seed"] == 5 and params["decoder_steps"] == 2
    # the image sent as data instead gives the same pixels; no weights: equal ones
    by_data = {**body, "items": [{"text": "a blue star"}, {"image": {"data": png_b64(image)}}]}
    assert all(np.array_equal(a, b) for a, b in zip(results(client, client.post(
        f"{API}/images/mix?wait=true", json=by_data).json()), got))  # fmt: skip
    equal = client.post(f"{API}/images/mix?wait=true", json={**body, "weights": None}).json()
    expected = tiny_pipe.mix(["a blue star", image], num_images=2, seed=5, decoder_guidance_scale=3.0)
    assert np.array_equal(results(client, equal)[1], np.asarray(expected[1]))


def test_inpaint_matches_the_pipeline_and_keeps_the_rest(client, tiny_pipe, source):
    image_id, image = source
    mask = box_mask(image.size, (8, 8, 20, 20))
    body = {"image": {"id": image_id}, "mask": {"data": png_b64(mask)}, "prompt": "a blue star", "num_images": 2,
            "seed": 6}  # fmt: skip
    job = client.post(f"{API}/images/inpaint?wait=true", json=body).json()
    expected = tiny_pipe.inpaint(image, mask, "a blue star", num_images=2, seed=6)
    got = results(client, job)
    assert len(got) == 2 and all(np.array_equal(g, np.asarray(e)) for g, e in zip(got, expected))
    keep = np.asarray(mask) < 128
    assert np.array_equal(got[0][keep], np.asarray(image)[keep])  # outside the mask: the source's pixels
    assert not np.array_equal(got[0], np.asarray(image))
    params = job["params"]
    assert job["kind"] == "inpaint" and params["image_id"] == image_id and params["mask_id"] is None
    assert (params["jump_length"], params["jump_n_sample"]) == (5, 1) and params["context_candidates"] >= 1

    # RePaint's jumps; a mask whose outside is transparent reads as the pipeline reads it (alpha ignored)
    rgba = box_mask(image.size, (8, 8, 20, 20), "RGBA")
    jumps = {**body, "mask": {"data": png_b64(rgba)}, "jump_length": 1, "jump_n_sample": 2, "num_images": 1}
    job = client.post(f"{API}/images/inpaint?wait=true", json=jumps).json()
    expected = tiny_pipe.inpaint(image, rgba, "a blue star", seed=6, jump_length=1, jump_n_sample=2)
    assert np.array_equal(results(client, job)[0], np.asarray(expected[0]))
    assert (job["params"]["jump_length"], job["params"]["jump_n_sample"]) == (1, 2)


def test_openapi_shows_the_new_requests(client):
    spec = client.get(f"{API}/openapi.json").json()
    assert {f"{API}/images/mix", f"{API}/images/inpaint"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert "negative_prompt" in schemas["GenerateRequest"]["properties"]
    mix = schemas["MixRequest"]["properties"]
    assert mix["items"]["minItems"] == 1 and mix["num_images"]["maximum"] == 4  # this server's max_images
    assert set(schemas["MixItem"]["properties"]) == {"text", "image"}
    assert {"image", "mask", "prompt"} <= set(schemas["InpaintRequest"]["required"])
    assert {"jump_length", "jump_n_sample", "num_images", "seed"} <= set(schemas["InpaintRequest"]["properties"])
    limits = client.get(f"{API}/config").json()["limits"]
    assert limits["max_mix_items"] >= 2 and limits["max_jump_n_sample"] >= 2


BLACK, WHITE = (0, 0, 0), (255, 255, 255)
BAD = [
    ("mix", {"items": []}, ["body", "items"], "at least one item"),
    ("mix", {}, ["body", "items"], "Field required"),
    ("mix", {"items": [{"text": "a"}, {"text": "b"}], "weights": [0, 0]}, ["body", "weights"], "positive"),
    ("mix", {"items": [{"text": "a"}, {"text": "b"}], "weights": [1, -1]}, ["body", "weights"], "positive"),
    ("mix", {"items": [{"text": "a"}], "weights": [1, 2]}, ["body", "weights"], "one number per item"),
    ("mix", {"items": [{"text": "a"}], "weights": ["x"]}, ["body", "weights", 0], "number"),
    ("mix", {"items": [{}]}, ["body", "items", 0], "exactly one of"),
    ("mix", {"items": [{"text": "a", "image": {"id": "x"}}]}, ["body", "items", 0], "exactly one of"),
    ("mix", {"items": [{"text": "  "}]}, ["body", "items", 0], "empty"),
    ("mix", {"items": [{"image": {"id": "nope"}}]}, ["body", "items", 0, "image", "id"], "no stored image"),
    ("mix", {"items": [{"image": {"data": "%%"}}]}, ["body", "items", 0, "image", "data"], "base64"),
    ("mix", {"items": [{"text": "a"}], "num_images": 5}, ["body", "num_images"], "4"),
    ("mix", {"items": [{"text": "a"}], "sampler": "ddim"}, ["body", "sampler"], "Extra inputs"),
    ("inpaint", {"image": "SRC", "prompt": "a"}, ["body", "mask"], "Field required"),
    ("inpaint", {"image": "SRC", "mask": ((20, 20), WHITE), "prompt": "a"}, ["body", "mask"], "20x20"),
    ("inpaint", {"image": "SRC", "mask": ((32, 32), BLACK), "prompt": "a"}, ["body", "mask"], "no white"),
    ("inpaint", {"image": "SRC", "mask": {"data": "%%"}, "prompt": "a"}, ["body", "mask", "data"], "base64"),
    ("inpaint", {"image": "SRC", "mask": {"id": "nope"}, "prompt": "a"}, ["body", "mask", "id"], "no stored"),
    ("inpaint", {"image": "SRC", "mask": ((32, 32), WHITE), "prompt": " "}, ["body", "prompt"], "empty"),
    (
        "inpaint",
        {"image": "SRC", "mask": ((32, 32), WHITE), "prompt": "a", "jump_n_sample": 2, "jump_length": 2},
        ["body", "jump_length"],
        "less than decoder_steps (2)",
    ),
    (
        "inpaint",
        {"image": "SRC", "mask": ((32, 32), WHITE), "prompt": "a", "jump_n_sample": 0},
        ["body", "jump_n_sample"],
        "greater than or equal to 1",
    ),
    ("inpaint", {"image": {"id": "nope"}, "mask": ((32, 32), WHITE), "prompt": "a"}, ["body", "image", "id"], "no"),
    ("generate", {"prompt": "a", "negative_prompt": 3}, ["body", "negative_prompt"], "string"),
    ("generate", {"prompt": "a", "negative_prompt": "x" * 20_001}, ["body", "negative_prompt"], "at most"),
]


@pytest.mark.parametrize("path,body,loc,words", BAD, ids=[f"{p}-{'.'.join(map(str, loc[1:]))}" for p, _, loc, _ in BAD])
def test_bad_inputs_are_one_line_422s_naming_the_field(client, source, path, body, loc, words):
    body = dict(body)
    if body.get("image") == "SRC":
        body["image"] = {"id": source[0]}
    if isinstance(body.get("mask"), tuple):
        size, colour = body["mask"]
        body["mask"] = {"data": png_b64(Image.new("RGB", size, colour))}
    response = client.post(f"{API}/images/{path}", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    messages = [d["msg"] for d in detail if d["loc"] == loc]
    assert messages, detail
    assert any(words in m for m in messages) and all("\n" not in m for m in messages), messages
