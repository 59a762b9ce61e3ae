"""The paper-claim experiments on tiny models and a tiny cache: every code path runs in seconds, writes its
table/JSON/plot, resumes from its stored units, and the measuring helpers agree with independent references."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from unclip.config import save_config
from unclip.data.shapes import ShapesWorld
from unclip.experiments import EXPERIMENTS, ExperimentContext, get_spec, run_experiment
from unclip.experiments import verdicts as V
from unclip.experiments.ar_vs_diffusion import PriorCompareSettings
from unclip.experiments.binding import BindingSettings, binding_caption, binding_measures
from unclip.experiments.common import ResultStore, Verdict, markdown_table
from unclip.experiments.diversity import DiversitySettings, matched_gap
from unclip.experiments.eclipse import EclipseSettings, PriorBudget
from unclip.experiments.guidance_fid import SweepSettings
from unclip.experiments.models import ComparisonDecoderTask, DecoderBudget, comparison_decoder, decode_with
from unclip.experiments.pca import PCASettings
from unclip.experiments.probe import fit_linear_probe, probe_accuracy
from unclip.experiments.report import write_readme
from unclip.experiments.text_diffs import TextDiffSettings, batched_edits, edit_captions
from unclip.experiments.variations import VariationSettings, batched_variations
from unclip.io import save_safetensors
from unclip.models.oracle_net import PRESETS, ShapesOracle
from unclip.pipeline import GenerationDefaults
from unclip.pipeline.builder import build_pipeline

TEST_DECODERS = DecoderBudget(name="test", preset="tiny", steps=2, batch_size=4, warmup_steps=1, ema_decay=0.9,
                              prior_steps=2)  # fmt: skip
FAST = GenerationDefaults(prior_steps=2, decoder_steps=2, upsampler_steps=2, inversion_steps=2, best_of=1)
HOLDOUT = 40


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny pipeline (saved as SHAPES_RUN/pipeline), a 96-row cache of it, a random tiny oracle, two tiny priors."""
    from unclip.data.embed_cache import EmbeddingCache, null_text_for_cache
    from unclip.data.shapes_cache import build_shapes_cache
    from unclip.train.config import TrainConfig
    from unclip.train.loop import run_training
    from unclip.train.prior_task import ARPriorTask, DiffusionPriorTask

    root = tmp_path_factory.mktemp("experiments")
    pipe = build_pipeline("tiny", num_upsamplers=1, defaults=FAST)
    pipe.save_pretrained(root / "shapes" / "pipeline")
    build_shapes_cache(root / "shapes" / "cache", pipe.clip, 96, ShapesWorld(seed=0), size=32, progress=False)
    torch.manual_seed(0)
    oracle = ShapesOracle(PRESETS["tiny"]())
    save_config(oracle.config, root / "oracle" / "config.json")
    save_safetensors(oracle.state_dict(), root / "oracle" / "model.safetensors")
    cache = EmbeddingCache.load(root / "shapes" / "cache")
    null = null_text_for_cache(cache, pipe.clip)
    config = TrainConfig(steps=1, batch_size=4, warmup_steps=0, log_every=1, ckpt_every=0, device="cpu")
    run_training(DiffusionPriorTask(cache, null, "tiny", holdout=HOLDOUT, eval_rows=0), config, root / "prior_diff")
    run_training(ARPriorTask(cache, null, "tiny", holdout=HOLDOUT, num_components=4, eval_rows=0), config,
                 root / "prior_ar")  # fmt: skip
    return root


def make_ctx(root, logs=None) -> ExperimentContext:
    return ExperimentContext(run_root=root / "runs", out_dir=root / "docs", shapes_run=root / "shapes",
                             oracle=root / "oracle", holdout=HOLDOUT, log=(logs.append if logs is not None else
                             lambda m: None), progress=False)  # fmt: skip


# competence_min 0: the tiny untrained models must reach the verdict rules here; the gate itself is tested below
TEST_SETTINGS = {
    "pca": PCASettings(train_rows=None, ks=(1, 2, 4)),
    "variations": VariationSettings(probe_train_rows=56, sources=3, variations=2, steps=2, chunk=2),
    "text_diffs": TextDiffSettings(kinds=("colour", "shape"), sources=2, thetas=(0.0, 0.5), steps=2, chunk=2),
    "guidance_fid": SweepSettings(rows=8, reference=8, guidances=(1.0, 3.0), steps=2, decoders=TEST_DECODERS,
                                  competence_min=0.0),
    "prior_matters": SweepSettings(rows=8, reference=8, guidances=(1.0, 3.0), steps=2, decoders=TEST_DECODERS,
                                   competence_min=0.0),
    "diversity": DiversitySettings(captions=2, per_caption=3, guidances=(1.0, 4.0), steps=2, decoders=TEST_DECODERS,
                                   competence_min=0.0),
    "binding": BindingSettings(captions=2, per_caption=2, guidances=(2.0,), reconstructions=3, steps=2,
                               decoders=TEST_DECODERS, gate_rows=8, competence_min=0.0),
    "ar_vs_diffusion": PriorCompareSettings(rows=8, reference=8, image_rows=3, steps=2, competence_min=0.0),
    "eclipse": EclipseSettings(rows=8, reference=8, captions=2, per_caption=3, steps=2, competence_min=0.0,
                               priors=PriorBudget(name="test", preset="tiny", steps=2, batch_size=8, warmup_steps=1)),
}  # fmt: skip


def _unit_interval(values) -> bool:
    return all(v is None or 0.0 <= v <= 1.0 for v in values)


def _ordered_intervals(intervals) -> bool:
    """Every written (low, high) has low <= high (NaN, written as null, where a statistic had no finite draw)."""
    return all(lo is None or hi is None or lo <= hi for lo, hi in intervals)


def _num(x):
    """A JSON number back as a float (the outputs write NaN as null)."""
    return float("nan") if x is None else x


def _same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a == pytest.approx(b, nan_ok=True))


def recomputed_best_accuracy(name: str, r: dict) -> dict[str, float]:
    """Each gated model's best mean specified-attribute accuracy, recomputed from the numbers written beside it."""
    if name == "diversity":
        return {m: max(_num(v["mean_accuracy"]) for v in per_g.values()) for m, per_g in r["results"].items()}
    if name == "guidance_fid":
        return {m: max(_num(v["accuracy"]["mean"]) for v in g.values()) for m, g in r["fd_and_accuracy"].items()}
    if name == "prior_matters":
        return {m: max(_num(v["accuracy"]["mean"]) for v in r["fd_and_accuracy"][m].values())
                for m in ("unclip", "text_embedding")}  # fmt: skip
    if name == "ar_vs_diffusion":
        return {m: _num(r["images"][m]["accuracy"]["mean"]) for m in ("diffusion", "ar")}
    if name == "eclipse":
        return {m: _num(r["images"][m]["accuracy"]) for m in ("diffusion", "projection")}
    return r["gate"]["best_accuracy"]  # binding: from units of other rows, checked in test_competence_gate


def _gate_failed(name: str, r: dict) -> bool:
    gate = r["gate"]
    best = recomputed_best_accuracy(name, r)
    assert best.keys() == gate["best_accuracy"].keys() and all(_same(best[m], gate["best_accuracy"][m]) for m in best)
    assert gate["failed"] == V.competence_failures(best, gate["minimum"]), (name, gate)
    return bool(gate["failed"])


def recomputed_held(name: str, r: dict) -> bool | None:
    """The verdict :mod:`unclip.experiments.verdicts` gives on the numbers experiment ``name`` wrote to its
    JSON ``results`` (checking the stored intermediates of the rule on the way). A comparison whose gate
    failed has no verdict (None)."""
    if "gate" in r and _gate_failed(name, r):
        return None
    if name == "ar_vs_diffusion":
        e, img = r["embeddings"], r["images"]
        return V.ar_vs_diffusion_verdict(
            _num(e["diffusion"]["cos_image"]), _num(e["ar"]["cos_image"]), _num(e["diffusion"]["fd"]),
            _num(e["ar"]["fd"]), _num(img["diffusion"]["accuracy"]["mean"]), _num(img["ar"]["accuracy"]["mean"]),
            img["diffusion"]["n"],
        )[0]  # fmt: skip
    if name == "eclipse":
        e, img = r["embeddings"], r["images"]
        for m in ("diffusion", "projection"):  # pooled accuracy = answer-weighted mean of the per-caption ones
            caps = img[m]["captions"]
            pooled = sum(c["accuracy"] * c["answers"] for c in caps) / sum(c["answers"] for c in caps)
            assert _same(pooled, img[m]["accuracy"])
        assert all(c["spread"] == pytest.approx(0.0, abs=1e-9) for c in img["projection"]["captions"])
        return V.eclipse_verdict(_num(e["diffusion"]["cos_image"]), _num(e["projection"]["cos_image"]),
                                 _num(img["diffusion"]["accuracy"]), _num(img["projection"]["accuracy"]),
                                 min(img["diffusion"]["answers"], img["projection"]["answers"]))[0]  # fmt: skip
    if name == "binding":
        u, c = r["generated"]["unclip"], r["generated"]["caption"]
        diffs = [V.binding_difference(_num(u[g]["bound"]), u[g]["n"], _num(c[g]["bound"]), c[g]["n"]) for g in u]
        assert all(_same(list(d), s) for d, s in zip(diffs, r["difference_bound"])) and len(diffs) == len(u)
        return V.binding_verdict(diffs)
    if name == "diversity":
        res = r["results"]
        pts = {m: [(_num(v["mean_accuracy"]), _num(v["mean_entropy"])) for v in res[m].values()] for m in res}
        held, gap = V.diversity_verdict(pts["unclip"], pts["caption"])
        assert _same(gap, r["matched_entropy_gap"])
        return held
    if name == "guidance_fid":
        curves = {m: [_num(v["fd"]) for v in per_g.values()] for m, per_g in r["fd_and_accuracy"].items()}
        assert all(_same(V.fd_rise(curves[m]), r["fd_rise"][m]) for m in curves)
        return V.guidance_fid_verdict(curves["unclip"], curves["caption"])
    if name == "prior_matters":
        fd = {m: _num(v) for m, v in r["best_fd"].items()}
        return V.prior_matters_verdict(fd["unclip"], fd["text_embedding"], fd["zero_shot"])
    if name == "pca":
        held, coarse, fine = V.pca_verdict(r["k90"], {a: _num(v) for a, v in r["above_chance"].items()})
        assert _same(coarse, r["median_k90_coarse"]) and _same(fine, r["median_k90_fine"])
        assert V.pca_encoded({a: _num(v) for a, v in r["above_chance"].items()}) == r["encoded"]
        return held
    if name == "text_diffs":
        edits = r["edits"]
        for e in edits.values():
            assert e["passes"] == V.text_diff_passes([_num(x) for x in e["flip_rate"]],
                                                     [_num(x) for x in e["mean_stability"]])  # fmt: skip
        return V.text_diffs_verdict(e["passes"] for e in edits.values())
    if name == "variations":
        probe, kept = r["probe_above_chance"], r["preservation_above_chance"]
        rho = V.spearman([_num(probe[a]) for a in probe], [_num(kept[a]) for a in probe])
        assert _same(rho if math.isfinite(rho) else None, r["spearman_above_chance"])
        return V.variations_verdict(r["spearman_above_chance"])
    raise AssertionError(f"no verdict rule for {name}")


def test_every_experiment_writes_its_outputs_and_resumes(world):
    assert set(TEST_SETTINGS) == set(EXPERIMENTS)
    readme = write_readme(world / "docs").read_text()
    assert readme.count("not yet run") == len(EXPERIMENTS)
    for name in EXPERIMENTS:
        logs: list[str] = []
        paths = run_experiment(name, make_ctx(world, logs), "test", settings=TEST_SETTINGS[name])
        assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values()), name
        data = json.loads(paths["json"].read_text())
        assert data["name"] == name
        # the written verdict is what the experiment's rule gives on the numbers it wrote
        held = recomputed_held(name, data["results"])
        assert data["verdict"]["held"] is held, (name, data["verdict"], held)
        gated = "gate" in data["results"]
        assert gated == (name in ("diversity", "guidance_fid", "prior_matters", "binding", "ar_vs_diffusion",
                                  "eclipse")), name  # fmt: skip
        assert not data["verdict"]["not_run"], name  # competence_min 0: every gate passes
        assert data["verdict"]["label"] == Verdict(held, "").label, name
        md = paths["md"].read_text()
        assert data["verdict"]["label"] in md and f"![{name}]({name}.png)" in md and "|---|" in md
        assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = (world / "docs" / "README.md").read_text()
    assert "not yet run" not in readme and all(f"({n}.md)" in readme for n in EXPERIMENTS)
    assert "## What held" not in readme
    # a hand-written discussion beside the JSON files goes under the table
    (world / "docs" / "discussion.md").write_text("Experiment 5 held because z_i keeps the background.\n")
    readme = write_readme(world / "docs").read_text()
    discussion = readme.index("## What held, what did not, and why")
    assert readme.index("| 9 |") < discussion < readme.index("## Methods")
    assert "Experiment 5 held because z_i keeps the background." in readme
    (world / "docs" / "discussion.md").unlink()
    # a second run reads every unit back instead of recomputing it, and gives the same numbers
    logs = []
    first = json.loads((world / "docs" / "diversity.json").read_text())["results"]
    run_experiment("diversity", make_ctx(world, logs), "test", settings=TEST_SETTINGS["diversity"])
    units = [m for m in logs if re.match(r"\[diversity\] \d+/\d+ ", m)]
    assert units and all(m.endswith("(cached)") for m in units)
    assert json.loads((world / "docs" / "diversity.json").read_text())["results"] == first


def test_competence_gate_stops_the_verdict(world):
    """A gate no model can pass (accuracy > 1): "not run: model X at a", no verdict, each model's number stated."""
    from dataclasses import replace

    for name in ("diversity", "binding"):
        settings = replace(TEST_SETTINGS[name], competence_min=1.01)
        paths = run_experiment(name, make_ctx(world), "test", settings=settings)
        data = json.loads(paths["json"].read_text())
        v, gate = data["verdict"], data["results"]["gate"]
        assert v["not_run"] and v["held"] is None and v["label"] == "not run"
        assert gate["failed"] == ["unclip", "caption"] and gate["minimum"] == 1.01
        for m, a in gate["best_accuracy"].items():
            assert f"model {gate['labels'][m]} at {a:.2f}" in v["summary"]
        assert v["summary"].startswith("not run: model ")
        md = paths["md"].read_text()
        assert "**Verdict at our scale: not run.**" in md and "**Competence gate**" in md and "(failed)" in md
        if name == "binding":  # its gate reads the shared sweep units: recompute from them
            from unclip.experiments.sweep import row_sweep_unit, summarise_scores

            ctx = make_ctx(world)
            rows = ctx.heldout_rows()[: settings.gate_rows]
            for m in ("unclip", "caption"):
                accs = [summarise_scores(row_sweep_unit(ctx, TEST_DECODERS, m, g, rows, settings.steps)["scores"])
                        ["mean"] for g in settings.guidances]  # fmt: skip
                assert gate["best_accuracy"][m] == pytest.approx(max(accs))
    readme = write_readme(world / "docs").read_text()
    assert "**not run**" in readme and "✗" in readme
    for name in ("diversity", "binding"):  # restore the passing outputs for the other tests
        run_experiment(name, make_ctx(world), "test", settings=TEST_SETTINGS[name])


def test_numbers_are_in_range(world):
    docs = world / "docs"
    if not (docs / "pca.json").is_file():
        for name in EXPERIMENTS:
            run_experiment(name, make_ctx(world), "test", settings=TEST_SETTINGS[name])
    pca = json.loads((docs / "pca.json").read_text())["results"]
    dim = pca["dim"]
    assert 1 <= pca["components_below_threshold"] <= dim and pca["heldout_rel_mse_at_k"] >= 0
    curve = pca["rel_mse_curve"]
    assert curve[0] == pytest.approx(1.0) and all(a >= b - 1e-12 for a, b in zip(curve, curve[1:]))
    assert all(_unit_interval(v.values()) for v in pca["probe_accuracy"].values())
    low, high = pca["heldout_rel_mse_interval"]
    assert 0 <= low <= high and _ordered_intervals(pca["probe_accuracy_interval_all_components"].values())
    assert all(_unit_interval(iv) for iv in pca["probe_accuracy_interval_all_components"].values())
    assert pca["k90_interval"].keys() == set(pca["encoded"]) and _ordered_intervals(pca["k90_interval"].values())
    var = json.loads((docs / "variations.json").read_text())["results"]
    assert _unit_interval([*var["probe_accuracy"].values(), *var["preservation"].values()])
    assert var["variations"] == 3 * 2 and var["sources"] == 3
    for key in ("probe_accuracy_interval", "preservation_interval"):
        assert var[key].keys() == var["probe_accuracy"].keys() and _ordered_intervals(var[key].values())
        assert all(_unit_interval(iv) for iv in var[key].values())
    td = json.loads((docs / "text_diffs.json").read_text())["results"]
    for kind in ("colour", "shape"):
        e = td["edits"][kind]
        assert _unit_interval(e["flip_rate"]) and _unit_interval(e["mean_stability"])
        for key in ("flip_rate", "mean_stability"):
            assert len(e[f"{key}_interval"]) == len(e[key]) and _ordered_intervals(e[f"{key}_interval"])
            assert all(_unit_interval(iv) for iv in e[f"{key}_interval"])
        assert e["flip_gain"] == pytest.approx(e["flip_rate"][-1] - e["flip_rate"][0])
    for name in ("guidance_fid", "prior_matters"):
        res = json.loads((docs / f"{name}.json").read_text())["results"]
        for per_g in res["fd_and_accuracy"].values():
            for v in per_g.values():
                assert math.isfinite(v["fd"]) and v["fd"] >= -1e-6 and _unit_interval([v["accuracy"]["mean"]])
    div = json.loads((docs / "diversity.json").read_text())["results"]["results"]
    for per_g in div.values():
        assert all(_unit_interval([v["mean_accuracy"], v["mean_entropy"]]) for v in per_g.values())
    bind = json.loads((docs / "binding.json").read_text())["results"]
    assert _unit_interval([bind["generated"]["unclip"]["2"]["bound"], bind["reconstructions"]["decoded"]["bound"]])
    prior = json.loads((docs / "ar_vs_diffusion.json").read_text())["results"]
    assert prior["embeddings"]["true_z_i"]["cos_image"] == pytest.approx(1.0)
    assert prior["embeddings"]["diffusion"]["fd"] >= 0 and prior["training"]["ar"]["params"] > 0
    for m in ("diffusion", "ar", "text_embedding", "true_z_i"):
        e, img = prior["embeddings"][m], prior["images"][m]
        assert _ordered_intervals([e["cos_image_interval"], e["fd_interval"], img["accuracy_interval"]])
        assert _unit_interval(img["accuracy_interval"]) and min(e["fd_interval"]) >= -1e-6
    assert prior["embeddings"]["true_z_i"]["cos_image_interval"] == pytest.approx([1.0, 1.0])


def test_linear_probe_reaches_the_optimum_of_its_objective():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5))
    labels = [int(np.argmax(r[:3] + 0.7 * rng.normal(size=3))) for r in x]  # overlapping classes
    l2 = 0.05
    probe = fit_linear_probe(torch.from_numpy(x), labels, l2=l2)
    # independent float64 check of the stationarity condition: X^T (P - Y) / N + l2 W = 0, sum(P - Y) = 0
    z = (x - x.mean(0)) / x.std(0)
    w, b = probe.weight.numpy(), probe.bias.numpy()
    logits = z @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.eye(3)[[probe.classes.index(v) for v in labels]]
    assert np.abs(z.T @ (p - y) / len(x) + l2 * w).max() < 1e-6
    assert np.abs((p - y).sum(0) / len(x)).max() < 1e-6
    # separable data are read perfectly on held-out points; a constant label gives a constant probe
    sep = torch.randn(400, 4, generator=torch.Generator().manual_seed(1))
    sep = sep[sep[:, 2].abs() > 0.5][:200]  # a margin around the boundary
    lab = ["big" if v > 0 else "small" for v in sep[:, 2].tolist()]
    assert probe_accuracy(sep[:150], lab[:150], sep[150:], lab[150:]) == 1.0
    assert fit_linear_probe(sep, ["x"] * 200).predict(sep[:3]) == ["x", "x", "x"]


def test_batched_manipulations_equal_the_pipeline_methods():
    pipe = build_pipeline("tiny", num_upsamplers=0, defaults=FAST)
    world = ShapesWorld(seed=3)
    images = [Image.fromarray(world.render_index(i, pipe.image_size)) for i in range(3)]
    batched = batched_variations(pipe, images, 2, eta=0.0, steps=3, generator=torch.Generator().manual_seed(0))
    for i, image in enumerate(images):
        one = pipe.vary(image, num_images=2, eta=0.0, decoder_steps=3, seed=0, output_type="pt").images * 2 - 1
        torch.testing.assert_close(batched[2 * i : 2 * i + 2], one, atol=2e-5, rtol=0)
    thetas = [0.0, 0.3]
    edits = batched_edits(pipe, images[:2], ["a blue circle", "a red star"], ["a red circle", ""], thetas, 3,
                          torch.Generator().manual_seed(0))  # fmt: skip
    one = pipe.edit(images[1], to_text="a red star", from_text=None, thetas=thetas, decoder_steps=3, seed=0,
                    output_type="pt").images * 2 - 1  # fmt: skip
    torch.testing.assert_close(edits[2:4], one, atol=2e-5, rtol=0)


def test_edit_captions_change_exactly_one_attribute():
    rng = np.random.default_rng(0)
    obj = {"shape": "circle", "colour": "red", "size": "small"}
    src, dst, target = edit_captions(obj, "blue", "colour", rng)
    assert src == "a red circle" and dst == f"a {target} circle" and target not in ("red", "blue")
    src, dst, target = edit_captions(obj, "blue", "size", rng)
    assert (src, dst, target) == ("a small red circle", "a large red circle", "large")
    with pytest.raises(ValueError, match="edit kind"):
        edit_captions(obj, "blue", "fill", rng)


def test_binding_measures_on_known_records():
    rec = ShapesWorld(seed=5).sample(
        next(i for i in range(200) if len(ShapesWorld(seed=5).sample(i).scene.objects) == 2)
    )
    caption, spec = binding_caption(rec.record)
    assert spec["objects"][0]["colour"] in caption and spec["relation"] in caption
    assert binding_measures(rec.record, spec) == {
        "count": True, "bound": True, "colours_bound": True, "colour_swap": False, "relation": True
    }  # fmt: skip
    swapped = json.loads(json.dumps(rec.record))
    a, b = swapped["objects"]
    a["colour"], b["colour"] = b["colour"], a["colour"]
    out = binding_measures(swapped, spec)
    assert out["colour_swap"] and not out["bound"] and not out["colours_bound"] and out["count"]
    reshaped = json.loads(json.dumps(rec.record))
    reshaped["objects"][0]["shape"] = "cross" if reshaped["objects"][0]["shape"] != "cross" else "star"
    out = binding_measures(reshaped, spec)
    assert out["colours_bound"] and not out["bound"]
    one = dict(swapped, objects=[a], num_objects=1, relation=None)
    assert binding_measures(one, spec) == {
        "count": False, "bound": False, "colours_bound": False, "colour_swap": False, "relation": False
    }  # fmt: skip


def test_matched_gap_interpolates_the_baseline():
    base = [(0.2, 0.9), (0.6, 0.5), (1.0, 0.1)]  # entropy = 1.1 - accuracy
    assert matched_gap([(0.4, 0.9), (0.8, 0.5)], base) == pytest.approx(((0.9 - 0.7) + (0.5 - 0.3)) / 2)
    assert matched_gap([(0.1, 0.9)], base) is None
    # the baseline's points inside the model's range count too (model entropy = accuracy here)
    assert matched_gap([(0.2, 0.2), (0.5, 0.5)], [(0.3, 0.6), (0.4, 0.6)]) == pytest.approx(
        ((0.3 - 0.6) + (0.4 - 0.6)) / 2
    )


def test_comparison_decoders_condition_as_documented(world):
    from unclip.data.embed_cache import EmbeddingCache

    cache = EmbeddingCache.load(world / "shapes" / "cache")
    rows = [0, 1, 2]
    for cond in ("image", "caption", "text_embedding"):
        task = ComparisonDecoderTask(cache, cond, TEST_DECODERS, HOLDOUT)
        batch = task.get_batch(rows, torch.device("cpu"))
        expected = {"image": cache.image_embedding[rows], "text_embedding": cache.text.pooled[rows],
                    "caption": torch.zeros(3, cache.image_embedding.shape[1])}[cond]  # fmt: skip
        torch.testing.assert_close(batch["image_embedding"], expected.float())
        assert (task.model_config.image_drop, task.model_config.text_drop) == (
            (1.0, 0.2) if cond == "caption" else (0.1, 0.5)
        )
    with pytest.raises(ValueError, match="conditioning"):
        ComparisonDecoderTask(cache, "pixels", TEST_DECODERS, HOLDOUT)
    # the caption-only decoder ignores whatever z_i it is handed; the image decoder does not
    ctx = make_ctx(world)
    text = __import__("unclip.experiments.sweep", fromlist=["cache_text"]).cache_text(ctx, rows)
    cap = comparison_decoder(ctx, "caption", TEST_DECODERS)
    img = comparison_decoder(ctx, "image", TEST_DECODERS)
    assert cap.params == img.params
    with torch.no_grad():
        for p in img.model.clip_emb.parameters():
            p.add_(0.5)  # make the z_i path matter (zero-initialised projections ignore z_i before training)
    z1, z2 = torch.randn(3, cache.image_embedding.shape[1]), torch.randn(3, cache.image_embedding.shape[1])
    a = decode_with(cap, text, 2.0, torch.Generator().manual_seed(0), image_embedding=z1, steps=2)
    b = decode_with(cap, text, 2.0, torch.Generator().manual_seed(0), image_embedding=z2, steps=2)
    torch.testing.assert_close(a, b)
    c = decode_with(img, text, 2.0, torch.Generator().manual_seed(0), image_embedding=z1, steps=2)
    d = decode_with(img, text, 2.0, torch.Generator().manual_seed(0), image_embedding=z2, steps=2)
    assert not torch.allclose(c, d)
    with pytest.raises(ValueError, match="needs image_embedding"):
        decode_with(img, text, 2.0, torch.Generator(), steps=2)


def test_a_cache_of_another_clip_is_refused(world, tmp_path):
    other = build_pipeline("tiny", num_upsamplers=0, seed=1, defaults=FAST)
    other.save_pretrained(tmp_path / "other")
    ctx = replace(make_ctx(world), pipeline=tmp_path / "other")
    ctx.get_cache()
    with pytest.raises(ValueError, match="was not built by the CLIP"):
        ctx.get_pipeline()


def test_units_are_keyed_by_their_inputs(world, tmp_path):
    ctx = make_ctx(world)
    a = ctx.run_dir("pca", uses=("cache",))
    assert a == ctx.run_dir("pca", uses=("cache",)) and (a / "context.json").is_file()
    assert ctx.run_dir("pca", uses=("cache", "oracle")) != a
    assert replace(ctx, seed=1).run_dir("pca", uses=("cache",)) != a
    shutil.copytree(world / "shapes" / "cache", tmp_path / "other")  # the same rows in another place
    assert replace(ctx, cache=tmp_path / "other").run_dir("pca", uses=("cache",)) != a
    with pytest.raises(FileNotFoundError, match="no shapes cache"):  # a named cache that is not there
        replace(ctx, cache=tmp_path / "nowhere").run_dir("pca", uses=("cache",))
    meta = world / "shapes" / "cache" / "index.json"
    st = meta.stat()
    os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a rebuilt cache (newer index.json)
    assert ctx.run_dir("pca", uses=("cache",)) != a


def test_result_store_and_table(tmp_path):
    store = ResultStore(tmp_path)
    calls = []
    assert store.compute("a_g1.5", lambda: calls.append(1) or {"x": np.float32(0.5), "t": torch.tensor([1, 2])}) == {
        "x": 0.5, "t": [1, 2]}  # fmt: skip
    assert store.compute("a_g1.5", lambda: calls.append(1) or {}) == {"x": 0.5, "t": [1, 2]} and calls == [1]
    with pytest.raises(ValueError, match="unit key"):
        store.put("../escape", {})
    assert markdown_table(["a", "b"], [[1.23456, None]]) == "| a | b |\n|---|---|\n| 1.235 | — |"


def test_cli_lists_runs_and_reports_errors(world, tmp_path):
    from unclip.cli.main import cli

    runner = CliRunner()
    out = runner.invoke(cli, ["experiment", "list"])
    assert out.exit_code == 0 and "8. pca" in out.output and "--budget quick" in out.output
    out = runner.invoke(cli, ["experiment", "readme", "-o", str(tmp_path / "d")])
    assert out.exit_code == 0 and "not yet run" in (tmp_path / "d" / "README.md").read_text()
    args = ["--shapes-run", str(world / "shapes"), "--oracle", str(world / "oracle"), "--holdout", str(HOLDOUT),
            "--run-dir", str(tmp_path / "r"), "-o", str(tmp_path / "d"), "--quiet"]  # fmt: skip
    out = runner.invoke(cli, ["experiment", "pca", *args])
    assert out.exit_code == 0, out.output
    written = json.loads((tmp_path / "d" / "pca.json").read_text())
    assert written["budget"] == "quick" and f"--shapes-run {world / 'shapes'}" in written["command"]
    out = runner.invoke(cli, ["experiment", "pca", *args, "--cache", str(tmp_path / "nowhere")])
    assert out.exit_code == 1 and "no shapes cache" in out.output
    out = runner.invoke(cli, ["experiment", "nonsense"])
    assert out.exit_code == 2


def test_specs_are_complete():
    from unclip.cli.experiment_cmds import _NAMES

    numbers = sorted(get_spec(n).number for n in EXPERIMENTS)
    assert numbers == list(range(1, 10)) and tuple(_NAMES) == tuple(EXPERIMENTS)  # the CLI's choices
    for name in EXPERIMENTS:
        spec = get_spec(name)
        assert set(spec.settings) == {"quick", "full"} and set(spec.cpu_budget) == {"quick", "full"}
        assert spec.command() == f"unclip experiment {name} --budget quick"
    assert replace(TEST_DECODERS, steps=3).steps == 3


def test_missing_cache_is_built_like_the_recipe_from_a_clean_clone(tmp_path, monkeypatch):
    """No `unclip train shapes` run: the cache is rendered and embedded with the pipeline's CLIP as the
    recipe says (sizes shrunk here); a named --cache or a shapes run with its own CLIP is never rebuilt."""
    import dataclasses

    import unclip.recipes as recipe_mod

    small = dataclasses.replace(recipe_mod.get_recipe("test"), cache_size=10, cache_image_size=16, world_seed=3)
    monkeypatch.setattr(recipe_mod, "get_recipe", lambda name, device="auto": small)
    logs: list[str] = []
    ctx = ExperimentContext(run_root=tmp_path / "runs", out_dir=tmp_path / "docs", shapes_run=tmp_path / "shapes",
                            holdout=2, log=logs.append, progress=False)  # fmt: skip
    # the first fingerprint asked for builds the cache, so it names the built cache, never its absence
    inputs = json.loads((ctx.run_dir("_models", uses=("cache",)) / "context.json").read_text())
    assert "absent" not in inputs["cache"] and inputs["cache"].startswith(str((tmp_path / "shapes").resolve()))
    cache = ctx.get_cache()
    assert len(cache) == 10 and cache.images.shape[1] == 16 and any("building it" in m for m in logs)
    world = ShapesWorld(seed=3)
    assert [world.sample(i).caption for i in range(10)] == list(cache.captions)
    clip = ctx.get_pipeline().clip  # CLIP sees each rendering through its PIL preprocessing, as for any source
    renders = [Image.fromarray(world.render_index(i, 16)) for i in range(10)]
    expected = clip.embed_images(clip.preprocess_pil(renders)).float()
    torch.testing.assert_close(cache.image_embedding.float(), expected, atol=1e-4, rtol=1e-4)
    (tmp_path / "other" / "clip").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="unclip train shapes"):
        ExperimentContext(shapes_run=tmp_path / "other", holdout=2, log=logs.append).get_cache()
    with pytest.raises(FileNotFoundError, match="--cache"):
        ExperimentContext(cache=tmp_path / "nowhere", holdout=2, log=logs.append).get_cache()


def test_decoders_trained_elsewhere_are_used_instead_of_training(world, tmp_path):
    """The GPU script's output (here run on the CPU with the tiny preset) feeds the decoder comparisons."""
    import sys
    from pathlib import Path

    from unclip.experiments.models import CONDITIONINGS, comparison_decoder
    from unclip.models.serialization import load_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import gpu_experiment_decoders as script

    assert script.calibrated_steps(1000.0, 60.0, 100, 3) == 180  # 0.9 * 60 s * 1000 / (100 * 3)
    assert script.calibrated_steps(1.0, 1.0, 100, 3) == 20
    with pytest.raises(ValueError, match="positive"):
        script.calibrated_steps(0.0, 60.0, 100, 3)
    out = tmp_path / "decoders"
    summary = script.main(["--out", str(out), "--device", "cpu", "--cache", str(world / "shapes" / "cache"),
                           "--holdout", str(HOLDOUT), "--preset", "tiny", "--batch-size", "4", "--seconds", "0.01",
                           "--calibrate-steps", "2"])  # fmt: skip
    steps = {summary["decoders"][c]["steps"] for c in CONDITIONINGS}
    assert steps == {summary["budget"]["steps"]} == {20}  # one recipe: the same steps for every decoder
    logs: list[str] = []
    ctx = make_ctx(world, logs)
    ctx.decoders = out
    for c in CONDITIONINGS:
        stage = comparison_decoder(ctx, c, TEST_DECODERS)
        saved = load_model("decoder", out / f"decoder_{c}" / "model", "cpu", torch.float32).state_dict()
        assert all(torch.equal(v, saved[k]) for k, v in stage.model.state_dict().items())
        assert stage.source == str(out / f"decoder_{c}" / "model") and stage.train_steps == 20
    assert not any("[models] training" in m for m in logs)
    assert make_ctx(world).run_dir("diversity") != ctx.run_dir("diversity")  # their units are kept apart
    run_experiment("guidance_fid", ctx, "test", settings=TEST_SETTINGS["guidance_fid"])
    assert not any("[models] training" in m for m in logs)
    (out / "decoder_caption" / "done.json").unlink()
    ctx = make_ctx(world)
    ctx.decoders = out
    with pytest.raises(FileNotFoundError, match="decoder_caption"):
        comparison_decoder(ctx, "caption", TEST_DECODERS)
