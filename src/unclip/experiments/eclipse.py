"""Experiment 9, ECLIPSE's counter-claim (Patel et al., CVPR 2024): a non-diffusion prior trained with a projection
and a contrastive objective (one forward pass, the same network) matches the diffusion prior.

Both priors are trained here on the experiment's cache with one recipe (:class:`PriorBudget`: steps, batch,
learning rate, EMA). The projection prior (:class:`~unclip.models.projection_prior.ProjectionPrior`) is the
diffusion prior's network run once, so each training sample costs the same forward and backward pass: equal
steps x batch is equal training compute (wall seconds recorded beside). Measures:

- on ``rows`` held-out cache rows: cos(ẑ, z_i) and cos(ẑ, z_t), and the Fréchet distance of the ẑ to the
  real z_i of ``reference`` other held-out rows;
- on ``captions`` one-object captions of an unseen world seed, ``per_caption`` images each, decoded from one
  ẑ per image by the same decoder (the shipped one when there is a pipeline) at its base resolution: the
  oracle's specified-attribute accuracy, the normalised entropy of the attributes the caption leaves free
  (what ECLIPSE does not report), and the spread of one caption's ẑ (mean pairwise cosine distance; 0 for
  the deterministic prior).

Competence gate: images from both priors must reach a mean specified-attribute accuracy of 0.7.

Verdict (the counter-claim): held when the projection prior's cosine to z_i is at most 0.02 below the
diffusion prior's and its accuracy not lower by more than 1.96 standard errors; not held when both are lower by
more than that; else inconclusive. The entropy difference (with a bootstrap 95 % interval over captions) is
reported beside it.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from unclip.experiments.common import (
    ExperimentContext,
    ExperimentResult,
    ExperimentSpec,
    Progress,
    ResultStore,
    Verdict,
    competence_gate,
    markdown_table,
    new_figure,
)
from unclip.experiments.verdicts import COMPETENCE_MIN, bootstrap_mean_interval, eclipse_verdict

KINDS = ("diffusion", "projection")
LABELS = {"diffusion": "diffusion prior", "projection": "projection prior (ECLIPSE)"}


@dataclass
class PriorBudget:
    """The training recipe both priors share (see the module doc); ``threads``: torch threads while training."""

    name: str = "quick"
    preset: str = "shapes"
    steps: int = 1500
    batch_size: int = 128
    lr: float = 5e-4
    warmup_steps: int = 100
    ema_decay: float = 0.999
    weight_decay: float = 0.01
    threads: int | None = None


@dataclass
class EclipseSettings:
    """rows/reference: held-out rows for the embedding measures and the FD reference; captions, per_caption:
    one-object captions and images each; guidance, steps: the decoder's; priors: the training recipe;
    contrastive_weight, temperature: the projection prior's objective; competence_min: the gate."""

    rows: int = 500
    reference: int = 500
    captions: int = 24
    per_caption: int = 8
    guidance: float = 3.0
    steps: int = 20
    priors: PriorBudget = field(default_factory=PriorBudget)
    contrastive_weight: float = 0.2
    temperature: float = 0.07
    competence_min: float = COMPETENCE_MIN


def trained_prior(ctx: ExperimentContext, kind: str, s: EclipseSettings) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The ``kind`` prior of ``s.priors``, trained (resumably) under ``run_root/_models/FINGERPRINT/BUDGET/``."""
    from unclip.data.embed_cache import null_text_for_cache
    from unclip.io import atomic_write_text
    from unclip.models.serialization import load_model
    from unclip.train.config import TrainConfig
    from unclip.train.loop import run_training
    from unclip.train.prior_task import DiffusionPriorTask, ProjectionPriorTask

    b = s.priors
    tag = "prior_diffusion" if kind == "diffusion" else f"prior_projection_w{s.contrastive_weight:g}_t{s.temperature:g}"
    out = ctx.run_dir("_models", uses=("cache",), extra=asdict(b)) / b.name / tag
    done = out / "done.json"
    if not done.is_file():
        cache = ctx.get_cache()
        null = null_text_for_cache(cache, ctx.get_clip())
        common = dict(holdout=ctx.holdout, eval_rows=0)
        if kind == "diffusion":
            task: Any = DiffusionPriorTask(cache, null, b.preset, **common)
        else:
            task = ProjectionPriorTask(cache, null, b.preset, contrastive_weight=s.contrastive_weight,
                                       temperature=s.temperature, **common)  # fmt: skip
        config = TrainConfig(steps=b.steps, batch_size=b.batch_size, lr=b.lr, warmup_steps=min(b.warmup_steps, b.steps),
                             ema_decay=b.ema_decay, weight_decay=b.weight_decay, log_every=max(1, min(50, b.steps)),
                             ckpt_every=max(1, min(200, b.steps)), eval_every=0, device=ctx.device,
                             num_threads=b.threads)  # fmt: skip
        ctx.log(f"[eclipse] training the {kind} prior ({b.name}: {b.steps} x {b.batch_size}) in {out}")
        with torch.enable_grad():
            result = run_training(task, config, out, progress=ctx.progress)
        if result.stop_reason != "done":
            raise RuntimeError(f"training {out} stopped early ({result.stop_reason}); re-run to resume")
        seconds = float(result.metrics.get("time_s", 0.0))
        atomic_write_text(done, json.dumps({"steps": result.step, "seconds": seconds}) + "\n")
    model = load_model("prior" if kind == "diffusion" else "projection_prior", out / "model", ctx.device).eval()
    info = {**json.loads(done.read_text()), "dir": str(out), "params": sum(p.numel() for p in model.parameters()),
            "batch_size": b.batch_size}  # fmt: skip
    return model, info


def _sampler(ctx: ExperimentContext, kind: str, model: torch.nn.Module):
    """``(text, generator) -> ẑ [B, D]`` for a prior: the diffusion prior at the pipeline's defaults."""
    from unclip.diffusion.stage_config import PRIOR_DIFFUSION
    from unclip.pipeline import GenerationDefaults
    from unclip.stages.prior import sample_prior

    if kind == "projection":
        return lambda text, generator: model.sample(text)
    d = GenerationDefaults()
    null = ctx.get_clip().embed_text([""]).to(device=ctx.device, dtype=torch.float32)

    def sample(text, generator):
        return sample_prior(model, text.to(device=ctx.device), null, generator=generator, diffusion=PRIOR_DIFFUSION,
                            steps=d.prior_steps, guidance_scale=d.prior_guidance_scale, best_of=d.best_of,
                            clamp=d.prior_clamp).float().cpu()  # fmt: skip

    return sample


def _spread(z: torch.Tensor) -> float:
    """Mean pairwise cosine distance of the rows of z [N, D] (0 when they are all equal)."""
    u = torch.nn.functional.normalize(z.double(), dim=-1)
    n = u.shape[0]
    return float((1 - (u @ u.T)).sum() / (n * (n - 1))) if n > 1 else 0.0


@torch.no_grad()
def run(ctx: ExperimentContext, s: EclipseSettings) -> ExperimentResult:
    from unclip.experiments.ar_vs_diffusion import _decoder_budget
    from unclip.experiments.models import comparison_decoder, decode_with
    from unclip.experiments.sweep import cache_text
    from unclip.measure.metrics import frechet_distance
    from unclip.measure.oracle import predict, score_specified, unspecified_entropy
    from unclip.measure.prior_metrics import cosine_scores
    from unclip.measure.quality import held_out_captions

    priors = {k: trained_prior(ctx, k, s) for k in KINDS}
    info = {k: v[1] for k, v in priors.items()}
    store = ResultStore(ctx.run_dir("eclipse", extra={k: v["dir"] for k, v in info.items()}) / "units")
    progress = Progress("eclipse", 2 * len(KINDS), ctx.log)
    cache = ctx.get_cache()
    held = ctx.heldout_rows()
    if s.rows + s.reference > len(held):
        raise ValueError(f"rows + reference ({s.rows} + {s.reference}) exceed the {len(held)} held-out rows")
    rows, ref_rows = held[: s.rows], held[len(held) - s.reference :]
    samples = held_out_captions(ctx.seed, s.captions, 1)
    text_rows = cache_text(ctx, rows)
    captions = ctx.get_clip().embed_text([x.caption for x in samples for _ in range(s.per_caption)]).to("cpu")
    decoder = comparison_decoder(ctx, "image", _decoder_budget(ctx))

    def embedding_unit(kind: str) -> dict[str, Any]:
        z = _sampler(ctx, kind, priors[kind][0])(text_rows, ctx.generator(91, len(rows), KINDS.index(kind)))
        z_true = cache.image_embedding[torch.tensor(rows)].float()
        z_ref = cache.image_embedding[torch.tensor(ref_rows)].float()
        return {**cosine_scores(z, z_true, text_rows.pooled), "fd": frechet_distance(z, z_ref), "n": len(rows)}

    def image_unit(kind: str) -> dict[str, Any]:
        gen = ctx.generator(92, s.captions, s.per_caption, KINDS.index(kind))
        z = _sampler(ctx, kind, priors[kind][0])(captions.to(dtype=torch.float32), gen)
        images = decode_with(decoder, captions.to(dtype=torch.float32), s.guidance, gen, image_embedding=z,
                             steps=s.steps).clamp(-1, 1)  # fmt: skip
        preds = predict(ctx.get_oracle(), images)
        per_caption = []
        for i, x in enumerate(samples):
            group = preds[i * s.per_caption : (i + 1) * s.per_caption]
            scores = [score_specified(p, x.specified) for p in group]
            right = [v for sc in scores for k, v in sc.items() if k != "count"]
            entropy = unspecified_entropy(group, x.specified)
            per_caption.append({
                "accuracy": sum(right) / len(right) if right else float("nan"), "answers": len(right),
                "entropy": statistics.fmean(entropy.values()) if entropy else float("nan"),
                "spread": _spread(z[i * s.per_caption : (i + 1) * s.per_caption]),
            })  # fmt: skip
        answers = sum(c["answers"] for c in per_caption)
        accuracy = sum(c["accuracy"] * c["answers"] for c in per_caption if c["answers"]) / max(answers, 1)
        return {"captions": per_caption, "accuracy": accuracy, "answers": answers, "images": len(preds),
                "entropy": float(np.nanmean([c["entropy"] for c in per_caption])),
                "spread": statistics.fmean(c["spread"] for c in per_caption)}  # fmt: skip

    tag = f"c{s.captions}x{s.per_caption}_g{s.guidance:g}_s{s.steps}"
    emb = {k: progress.unit(store, f"embeddings_{k}_n{len(rows)}_r{len(ref_rows)}", lambda k=k: embedding_unit(k),
                            f"{k} prior embeddings") for k in KINDS}  # fmt: skip
    img = {k: progress.unit(store, f"images_{k}_{tag}", lambda k=k: image_unit(k), f"{k} prior images") for k in KINDS}
    return _result(ctx, s, emb, img, info)


def _result(ctx: ExperimentContext, s: EclipseSettings, emb: dict, img: dict, info: dict) -> ExperimentResult:
    d, p = KINDS
    held, se = eclipse_verdict(emb[d]["cos_image"], emb[p]["cos_image"], img[d]["accuracy"], img[p]["accuracy"],
                               min(img[d]["answers"], img[p]["answers"]))  # fmt: skip

    def entropy(c: dict) -> float:  # stored units write NaN (a caption that leaves nothing free) as null
        return float("nan") if c["entropy"] is None else c["entropy"]

    gaps = [entropy(cp) - entropy(cd) for cd, cp in zip(img[d]["captions"], img[p]["captions"])]
    gap, low, high = bootstrap_mean_interval(gaps, seed=ctx.seed)
    verdict = Verdict(held, f"cos to true z_i: projection {emb[p]['cos_image']:.3f} vs diffusion "
                            f"{emb[d]['cos_image']:.3f}; image accuracy {img[p]['accuracy']:.3f} vs "
                            f"{img[d]['accuracy']:.3f} (±{se:.3f}); free-attribute entropy projection − diffusion "
                            f"{gap:+.3f} [{low:+.3f}, {high:+.3f}]; ẑ spread per caption {img[p]['spread']:.3f} vs "
                            f"{img[d]['spread']:.3f}.")  # fmt: skip
    verdict, gate = competence_gate(verdict, {k: img[k]["accuracy"] for k in KINDS}, LABELS, s.competence_min)
    header = ["prior", "cos(ẑ, z_i)", "cos(ẑ, z_t)", "FD to real z_i", "image accuracy", "free-attribute entropy",
              "ẑ spread per caption", "parameters", "train steps x batch", "train s"]  # fmt: skip
    table_rows = [[LABELS[k], emb[k]["cos_image"], emb[k]["cos_text"], emb[k]["fd"], img[k]["accuracy"],
                   img[k]["entropy"], img[k]["spread"], f"{info[k]['params']:,}",
                   f"{info[k]['steps']} x {info[k]['batch_size']}", info[k].get("seconds")] for k in KINDS]  # fmt: skip
    fig, (ax1, ax2) = new_figure(2)
    names = [LABELS[k] for k in KINDS]
    acc_err = [1.96 * float(np.sqrt(max(img[k]["accuracy"] * (1 - img[k]["accuracy"]), 0) / max(img[k]["answers"], 1)))
               for k in KINDS]  # fmt: skip
    ax1.bar(names, [img[k]["accuracy"] for k in KINDS], yerr=acc_err, color=["C0", "C1"], capsize=4)
    ax1.set(ylabel="specified-attribute accuracy", title="Decoded images (95 % interval)", ylim=(0, 1))
    ents = [img[k]["entropy"] for k in KINDS]
    ax2.bar(names, ents, color=["C0", "C1"])
    ax2.errorbar([names[1]], [ents[1]], yerr=[[max(-low, 0.0)], [max(high, 0.0)]], fmt="none", color="k",
                 capsize=4)  # fmt: skip
    ax2.set(ylabel="normalised entropy of free attributes", title="Diversity (bar: interval of the difference)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=7)
    notes = (f"{emb[d]['n']} held-out rows for the embedding measures; {s.captions} one-object captions of world "
             f"seed {ctx.seed}, {s.per_caption} images each, decoded at guidance {s.guidance:g} with {s.steps} DDPM "
             "steps at the decoder's base resolution. Diffusion prior sampled at the pipeline's defaults; the "
             f"projection prior in one pass (contrastive weight {s.contrastive_weight:g}, temperature "
             f"{s.temperature:g}). Both trained with {s.priors.steps} steps of batch "
             f"{s.priors.batch_size}.")  # fmt: skip
    data = {"embeddings": emb, "images": img, "training": info, "entropy_gap": {"mean": gap, "low": low, "high": high},
            "gate": gate}  # fmt: skip
    return ExperimentResult(verdict, markdown_table(header, table_rows), data, fig, notes)


SPEC = ExperimentSpec(
    number=9,
    name="eclipse",
    title="ECLIPSE: a non-diffusion prior",
    claim="A non-diffusion prior trained with a projection and a contrastive loss (one pass, the same network) "
    "matches the diffusion prior at equal training compute; we add whether it keeps the free attributes' "
    "diversity.",
    paper="(Patel et al., CVPR 2024, ECLIPSE; counter to the paper's §5.4 preference for a diffusion prior.)",
    needs=("cache", "oracle", "pipeline"),
    cpu_budget={
        "quick": "~25 CPU-min training both priors (1,500 x 128) + ~5 CPU-min sampling",
        "full": "~100 CPU-min training both priors (6,000 x 128) + ~15 CPU-min sampling",
    },
    settings={
        "quick": EclipseSettings(),
        "full": EclipseSettings(captions=60, priors=PriorBudget(name="full", steps=6000)),
    },  # fmt: skip
    run=run,
)
