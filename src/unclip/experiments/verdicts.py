"""The verdict rules of the paper-claim experiments, as pure functions of plain numbers.

Each experiment measures (sampling, decoding, probing) and then decides whether its claim held with one of
these functions; each implements exactly the rule its experiment's module docstring states, so the rules
can be tested on constructed numbers and checked against the numbers an experiment wrote to its JSON.
``True`` = held, ``False`` = did not hold, ``None`` = inconclusive (see
:class:`~unclip.experiments.common.Verdict`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

Z_95 = 1.96  # standard errors of a two-sided 95% interval
DIVERSITY_MARGIN = 0.05  # entropy gap at matched accuracy beyond which diversity differs
PCA_COARSE = ("background", "colour", "size", "position")
PCA_FINE = ("shape", "fill")
PCA_ENCODED_MIN = 0.2  # an attribute is encoded when the probe on all of z_i closes 20% of the chance-to-perfect gap
TEXT_DIFF_MIN_FLIP_GAIN = 0.25
TEXT_DIFF_MIN_STABILITY_KEPT = 0.8
VARIATIONS_HELD_RHO = 0.6
VARIATIONS_NOT_HELD_RHO = 0.0
COMPETENCE_MIN = 0.7  # mean specified-attribute accuracy every compared model must reach at its best guidance
ECLIPSE_COS_MARGIN = 0.02  # the projection prior "matches" when its cos(ẑ, z_i) is at most this much lower


def proportion_se(p: float, n: int) -> float:
    """Binomial standard error sqrt(p (1 - p) / n) of a rate p over n trials (n < 1 counts as 1)."""
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


# ----------------------------------------------------------------------------- the competence gate


def competence_failures(best_accuracy: Mapping[str, float], minimum: float = COMPETENCE_MIN) -> list[str]:
    """The models (mapping order) whose best mean specified-attribute accuracy is below ``minimum`` (or not a
    number): a comparison with any of them writes no verdict."""
    return [m for m, a in best_accuracy.items() if a is None or not math.isfinite(a) or a < minimum]


def bootstrap_mean_interval(
    values: Sequence[float], draws: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` (NaNs dropped) and its percentile bootstrap interval
    (``draws`` resamples with replacement, numpy's generator seeded by ``seed``); NaNs when nothing is left."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    means = np.random.default_rng(seed).choice(x, size=(draws, x.size), replace=True).mean(axis=1)
    tail = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def bootstrap_intervals(
    sizes: Sequence[int],
    statistics: Callable[..., Sequence[float]],
    draws: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    bias_corrected: bool = False,
) -> list[tuple[float, float]]:
    """Per statistic, (low, high): percentile bootstrap intervals of ``statistics(*indices)`` (a sequence of
    numbers). Each draw resamples, with replacement and independently, ``range(n)`` for every n in ``sizes``
    (e.g. held-out rows and scenes: one int64 index array per size, in order) and evaluates all statistics on
    the same resample. A statistic's NaN draws are dropped; its interval is NaNs when all are.

    ``bias_corrected``: shift each interval by the bootstrap estimate of the statistic's bias (mean of the draws
    minus the statistic of the sample itself), for statistics that resampling inflates, such as the Fréchet
    distance (repeated rows shrink the covariance's effective sample size)."""
    if not sizes or any(n < 1 for n in sizes):
        raise ValueError(f"bootstrap sizes must be positive, got {list(sizes)}")
    rng = np.random.default_rng(seed)
    values = np.array(
        [np.atleast_1d(np.asarray(statistics(*(rng.integers(0, n, size=n) for n in sizes)), dtype=float))
         for _ in range(draws)]
    )  # fmt: skip
    if bias_corrected:
        sample = np.atleast_1d(np.asarray(statistics(*(np.arange(n) for n in sizes)), dtype=float))
        values = values - (np.nanmean(np.where(np.isfinite(values), values, np.nan), axis=0) - sample)
    tail = (1 - level) / 2
    out = []
    for column in values.T:
        column = column[np.isfinite(column)]
        out.append((float(np.quantile(column, tail)), float(np.quantile(column, 1 - tail))) if column.size
                   else (float("nan"), float("nan")))  # fmt: skip
    return out


def bootstrap_interval(
    sizes: Sequence[int], statistic: Callable[..., float], draws: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """(low, high) of one statistic: :func:`bootstrap_intervals` with ``statistic`` alone."""
    return bootstrap_intervals(sizes, lambda *i: [statistic(*i)], draws, seed, level)[0]


def format_interval(value: float, interval: Sequence[float], digits: int = 2) -> str:
    """``0.83 [0.74, 0.90]``: a number with its 95% interval."""
    low, high = interval
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


# ----------------------------------------------------------------------------- 3. diffusion vs AR prior


def ar_vs_diffusion_verdict(
    cos_diffusion: float,
    cos_ar: float,
    fd_diffusion: float,
    fd_ar: float,
    acc_diffusion: float,
    acc_ar: float,
    n_images: int,
) -> tuple[bool | None, float]:
    """(held, se): held if diffusion has cos >, FD < and acc >= AR's - 1.96 se; not if AR has cos >, FD <; else None."""
    se = math.sqrt(sum(max(a * (1 - a), 0.0) / n_images for a in (acc_diffusion, acc_ar)))
    if cos_diffusion > cos_ar and fd_diffusion < fd_ar and acc_diffusion >= acc_ar - Z_95 * se:
        return True, se
    if cos_ar > cos_diffusion and fd_ar < fd_diffusion:
        return False, se
    return None, se


# ----------------------------------------------------------------------------- 9. ECLIPSE


def eclipse_verdict(
    cos_diffusion: float, cos_projection: float, acc_diffusion: float, acc_projection: float, n_answers: int
) -> tuple[bool | None, float]:
    """(held, se) for "the projection prior matches the diffusion prior": held when its cos to z_i is at most
    ECLIPSE_COS_MARGIN lower and its accuracy at most 1.96 se lower; not held when both are lower by more;
    else None. se: of the accuracy difference over ``n_answers`` specified attributes per prior."""
    se = math.sqrt(sum(max(a * (1 - a), 0.0) / max(n_answers, 1) for a in (acc_diffusion, acc_projection)))
    cos_close = cos_projection >= cos_diffusion - ECLIPSE_COS_MARGIN
    acc_close = acc_projection >= acc_diffusion - Z_95 * se
    if cos_close and acc_close:
        return True, se
    if not cos_close and not acc_close:
        return False, se
    return None, se


# ----------------------------------------------------------------------------- 7. binding


def binding_difference(unclip_rate: float, unclip_n: int, caption_rate: float, caption_n: int) -> tuple[float, float]:
    """(unCLIP's binding rate - the caption-only decoder's, standard error of that difference)."""
    return unclip_rate - caption_rate, math.hypot(
        proportion_se(unclip_rate, unclip_n), proportion_se(caption_rate, caption_n)
    )


def binding_verdict(differences: Sequence[tuple[float, float]]) -> bool | None:
    """At the (difference, se) of largest |difference|: held when d < -1.96 se, not held when d > 1.96 se, else None."""
    d, se = max(differences, key=lambda x: abs(x[0]))
    return True if d < -Z_95 * se else (False if d > Z_95 * se else None)


# ----------------------------------------------------------------------------- 1. diversity


def matched_gap(model: list[tuple[float, float]], base: list[tuple[float, float]]) -> float | None:
    """Mean H_model - H_base over points of either (acc, entropy) curve in the other's acc range (interpolated)."""

    def at(points: list[tuple[float, float]], a: float) -> float:
        return float(np.interp(a, [p[0] for p in points], [p[1] for p in points]))

    model, base = sorted(model), sorted(base)
    gaps = [h - at(base, a) for a, h in model if base[0][0] <= a <= base[-1][0]]
    gaps += [at(model, a) - h for a, h in base if model[0][0] <= a <= model[-1][0]]
    return float(np.mean(gaps)) if gaps else None


def diversity_verdict(
    unclip: list[tuple[float, float]], caption: list[tuple[float, float]]
) -> tuple[bool | None, float | None]:
    """(held, matched_gap): > 0.05 held, < -0.05 not; no overlap: max points, (acc >=, H >) held, (<=, <) not."""
    gap = matched_gap(unclip, caption)
    if gap is not None:
        return (True if gap > DIVERSITY_MARGIN else (False if gap < -DIVERSITY_MARGIN else None)), gap
    (au, hu), (ab, hb) = max(unclip), max(caption)
    return (True if (au >= ab and hu > hb) else (False if (au <= ab and hu < hb) else None)), None


# ----------------------------------------------------------------------------- 4. guidance and FD


def fd_rise(fd_by_guidance: Sequence[float]) -> float:
    """FD at the largest guidance (the last) minus the best (lowest) FD over the sweep."""
    return fd_by_guidance[-1] - min(fd_by_guidance)


def guidance_fid_verdict(fd_unclip: Sequence[float], fd_caption: Sequence[float]) -> bool:
    """Held when unCLIP's fd_rise is strictly below the caption-only decoder's (FDs in guidance order)."""
    return fd_rise(fd_unclip) < fd_rise(fd_caption)


# ----------------------------------------------------------------------------- 8. PCA


def pca_encoded(above_chance: Mapping[str, float]) -> list[str]:
    """Attributes z_i encodes: probe on all of z_i at least 0.2 of the way from chance to perfect (mapping order)."""
    return [a for a, v in above_chance.items() if v >= PCA_ENCODED_MIN]


def pca_verdict(
    k90: Mapping[str, int | None], above_chance: Mapping[str, float]
) -> tuple[bool | None, float | None, float | None]:
    """(held, coarse, fine medians of encoded attributes' k90): held if coarse < fine, None if a side has none."""
    encoded = pca_encoded(above_chance)
    coarse_k = [k90[a] for a in PCA_COARSE if a in encoded]
    fine_k = [k90[a] for a in PCA_FINE if a in encoded]
    coarse = statistics.median(coarse_k) if coarse_k else None
    fine = statistics.median(fine_k) if fine_k else None
    if coarse is None or fine is None:
        return None, coarse, fine
    return coarse < fine, coarse, fine


# ----------------------------------------------------------------------------- 2. the prior matters


def prior_matters_verdict(unclip_fd: float, text_embedding_fd: float, zero_shot_fd: float) -> bool:
    """Held when the best FDs are in the paper's order, unCLIP < z_t-trained decoder < z_t zero-shot (strict)."""
    return unclip_fd < text_embedding_fd < zero_shot_fd


# ----------------------------------------------------------------------------- 6. text diffs


def text_diff_passes(flip_rate: Sequence[float], mean_stability: Sequence[float]) -> bool:
    """An edit kind passes if flip rate gains >= 0.25 from first to last θ and stability keeps >= 0.8 of its start."""
    return (
        flip_rate[-1] - flip_rate[0] >= TEXT_DIFF_MIN_FLIP_GAIN
        and mean_stability[-1] >= TEXT_DIFF_MIN_STABILITY_KEPT * mean_stability[0]
    )


def text_diffs_verdict(passes: Iterable[bool]) -> bool:
    """Held when every edit kind passes (text_diff_passes); no kinds counts as held."""
    return all(passes)


# ----------------------------------------------------------------------------- 5. variations


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman correlation of a and b (ordinal ranks: ties not averaged); NaN for fewer than two values."""
    ra, rb = np.argsort(np.argsort(a)).astype(float), np.argsort(np.argsort(b)).astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def variations_verdict(rho: float | None) -> bool | None:
    """Held when Spearman ρ >= 0.6, not held when ρ <= 0, else (or ρ undefined: None/NaN) None."""
    if rho is None or not np.isfinite(rho):
        return None
    return True if rho >= VARIATIONS_HELD_RHO else (False if rho <= VARIATIONS_NOT_HELD_RHO else None)
