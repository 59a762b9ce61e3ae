"""The experiments' verdict rules (:mod:`unclip.experiments.verdicts`) on constructed numbers: every rule gives
held, did not hold and inconclusive where its module docstring says, and flips exactly at its threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unclip.experiments import verdicts as V
from unclip.experiments.common import Verdict
from unclip.experiments.verdicts import (
    ar_vs_diffusion_verdict,
    binding_difference,
    binding_verdict,
    diversity_verdict,
    fd_rise,
    guidance_fid_verdict,
    matched_gap,
    pca_encoded,
    pca_verdict,
    prior_matters_verdict,
    proportion_se,
    spearman,
    text_diff_passes,
    text_diffs_verdict,
    variations_verdict,
)

EPS = 1e-9

# ----------------------------------------------------------------------------- helpers


def test_proportion_se():
    assert proportion_se(0.5, 100) == pytest.approx(0.05)
    assert proportion_se(0.0, 10) == 0.0 and proportion_se(1.0, 10) == 0.0
    assert proportion_se(0.5, 0) == pytest.approx(0.5)  # n < 1 counts as one trial


def test_verdict_labels():
    assert [Verdict(h, "").label for h in (True, False, None)] == ["held", "did not hold", "inconclusive"]


# ----------------------------------------------------------------------------- 3. diffusion vs AR prior


def _ar(cos_d=0.9, cos_a=0.8, fd_d=1.0, fd_a=2.0, acc_d=0.5, acc_a=0.5, n=100):
    return ar_vs_diffusion_verdict(cos_d, cos_a, fd_d, fd_a, acc_d, acc_a, n)


def test_ar_vs_diffusion_outcomes():
    held, se = _ar()
    assert held is True and se == pytest.approx(math.sqrt(0.25 / 100 + 0.25 / 100))
    assert _ar(cos_d=0.8, cos_a=0.9, fd_d=2.0, fd_a=1.0)[0] is False  # AR wins both embedding measures
    assert _ar(cos_d=0.8, cos_a=0.9, fd_d=2.0, fd_a=1.0, acc_d=1.0, acc_a=0.0)[0] is False  # accuracy not asked
    assert _ar(cos_d=0.9, cos_a=0.8, fd_d=2.0, fd_a=1.0)[0] is None  # split: diffusion cos, AR FD
    assert _ar(cos_d=0.8, cos_a=0.9, fd_d=1.0, fd_a=2.0)[0] is None  # split: AR cos, diffusion FD
    assert _ar(cos_d=0.8, cos_a=0.8)[0] is None and _ar(fd_d=2.0, fd_a=2.0)[0] is None  # ties are not wins


def test_ar_vs_diffusion_accuracy_margin():
    # diffusion accuracy 0 (no variance), AR accuracy p: se = sqrt(p (1 - p) / n), and 0 >= p - 1.96 se exactly
    # when p = 1.96² / (n + 1.96²)
    n = 100
    p_star = 1.96**2 / (n + 1.96**2)
    assert _ar(acc_d=0.0, acc_a=p_star - 1e-6, n=n)[0] is True  # just inside the margin
    assert _ar(acc_d=0.0, acc_a=p_star + 1e-6, n=n)[0] is None  # just outside: less accurate than the margin
    held, se = _ar(acc_d=0.0, acc_a=0.5, n=1)
    assert se == pytest.approx(0.5) and held is True  # 0.0 >= 0.5 - 1.96 * 0.5
    assert _ar(acc_d=0.0, acc_a=1.0, n=1000)[0] is None  # se 0: any deficit counts
    assert _ar(acc_d=1.0, acc_a=1.0, n=1000)[0] is True  # equal accuracy is "not less accurate"


# ----------------------------------------------------------------------------- 7. binding


def test_binding_difference():
    d, se = binding_difference(0.2, 100, 0.5, 50)
    assert d == pytest.approx(-0.3)
    assert se == pytest.approx(math.sqrt(0.2 * 0.8 / 100 + 0.5 * 0.5 / 50))


def test_binding_outcomes_and_threshold():
    assert binding_verdict([(-0.3, 0.1)]) is True  # unCLIP binds worse by 3 se
    assert binding_verdict([(0.3, 0.1)]) is False  # unCLIP binds better by 3 se
    assert binding_verdict([(0.1, 0.1)]) is None and binding_verdict([(0.0, 0.0)]) is None
    se = 0.1
    assert binding_verdict([(-1.96 * se - EPS, se)]) is True
    assert binding_verdict([(-1.96 * se + EPS, se)]) is None
    assert binding_verdict([(1.96 * se + EPS, se)]) is False
    assert binding_verdict([(1.96 * se - EPS, se)]) is None
    assert binding_verdict([(-1.96 * se, se)]) is None and binding_verdict([(1.96 * se, se)]) is None  # ties
    assert binding_verdict([(-0.01, 0.0)]) is True  # no noise: any difference counts


def test_binding_uses_the_largest_difference():
    assert binding_verdict([(-0.05, 0.1), (-0.5, 0.1), (0.1, 0.1)]) is True
    assert binding_verdict([(-0.5, 1.0), (0.3, 0.1)]) is None  # largest |d| decides, even if another is significant
    assert binding_verdict([(0.3, 0.1), (-0.3, 0.1)]) is False  # equal |d|: the first


# ----------------------------------------------------------------------------- 1. diversity


def test_matched_gap_against_hand_computed_interpolation():
    # baseline entropy 1.1 - accuracy; unCLIP at acc 0.4 (baseline 0.7) and 0.8 (baseline 0.3); baseline's
    # point 0.6 lies in unCLIP's range [0.4, 0.8], where unCLIP interpolates to (0.9 + 0.5) / 2 = 0.7
    base = [(0.2, 0.9), (0.6, 0.5), (1.0, 0.1)]
    model = [(0.8, 0.5), (0.4, 0.9)]  # unsorted on purpose
    assert matched_gap(model, base) == pytest.approx(((0.9 - 0.7) + (0.5 - 0.3) + (0.7 - 0.5)) / 3)
    assert matched_gap([(0.1, 0.9)], base) is None


def test_diversity_overlapping_range():
    base = [(0.0, 0.5), (1.0, 0.5)]
    held, gap = diversity_verdict([(0.5, 0.6)], base)
    assert held is True and gap == pytest.approx(0.1)
    assert diversity_verdict([(0.5, 0.4)], base) == (False, pytest.approx(-0.1))
    assert diversity_verdict([(0.5, 0.52)], base)[0] is None
    # the 0.05 margin: just above, just below, and ties (exactly 0.05 is not more than 0.05)
    flat = [(0.0, 0.0), (1.0, 0.0)]
    assert diversity_verdict([(0.5, 0.05 + EPS)], flat)[0] is True
    assert diversity_verdict([(0.5, 0.05 - EPS)], flat)[0] is None
    assert diversity_verdict([(0.5, 0.05)], flat) == (None, 0.05)
    assert diversity_verdict([(0.5, -0.05 - EPS)], flat)[0] is False
    assert diversity_verdict([(0.5, -0.05 + EPS)], flat)[0] is None
    assert diversity_verdict([(0.5, -0.05)], flat) == (None, -0.05)


def test_diversity_interpolated_gap_decides():
    # unCLIP (0.3, 0.6), (0.7, 0.6); baseline (0.5, 0.5): no unCLIP point lies in the baseline's range, but the
    # baseline's lies in unCLIP's, where unCLIP interpolates to 0.6 -> gap 0.1 -> held
    held, gap = diversity_verdict([(0.3, 0.6), (0.7, 0.6)], [(0.5, 0.5)])
    assert held is True and gap == pytest.approx(0.1)
    # baseline line through (0, 0.2) and (1, 1.0): at acc 0.25 it is 0.4; unCLIP's 0.43 is 0.03 above
    assert diversity_verdict([(0.25, 0.43)], [(0.0, 0.2), (1.0, 1.0)]) == (None, pytest.approx(0.03))
    assert diversity_verdict([(0.25, 0.47)], [(0.0, 0.2), (1.0, 1.0)]) == (True, pytest.approx(0.07))


def test_diversity_dominance_without_overlap():
    low = [(0.1, 0.3), (0.2, 0.2)]
    high = [(0.6, 0.5), (0.8, 0.4)]
    assert matched_gap(high, low) is None
    assert diversity_verdict(high, low) == (True, None)  # more accurate and more diverse at the best point
    assert diversity_verdict(low, high) == (False, None)  # dominated
    # more accurate but less diverse at the most accurate points: inconclusive
    assert diversity_verdict([(0.8, 0.1)], [(0.2, 0.9)]) == (None, None)
    assert diversity_verdict([(0.2, 0.9)], [(0.8, 0.1)]) == (None, None)
    # the most accurate point counts, not the most diverse: unCLIP's (0.9, 0.1) is below the baseline's 0.25
    assert diversity_verdict([(0.7, 0.9), (0.9, 0.1)], [(0.1, 0.25), (0.2, 0.2)]) == (None, None)


def test_diversity_dominance_ties():
    # equal entropy at the most accurate points dominates neither way (equal accuracy would overlap)
    assert diversity_verdict([(0.9, 0.6)], [(0.1, 0.6)]) == (None, None)
    assert diversity_verdict([(0.1, 0.6)], [(0.9, 0.6)]) == (None, None)
    assert diversity_verdict([(0.9, 0.6 + EPS)], [(0.1, 0.6)]) == (True, None)
    assert diversity_verdict([(0.1, 0.6 - EPS)], [(0.9, 0.6)]) == (False, None)
    # equal best accuracy means the ranges touch: the gap branch decides
    assert diversity_verdict([(0.5, 0.6)], [(0.5, 0.4)]) == (True, pytest.approx(0.2))


# ----------------------------------------------------------------------------- 4. guidance and FD


def test_fd_rise_is_last_minus_best():
    assert fd_rise([5.0, 2.0, 4.0]) == pytest.approx(2.0)
    assert fd_rise([1.0, 2.0, 3.0]) == pytest.approx(2.0)
    assert fd_rise([3.0, 2.0, 1.0]) == 0.0


def test_guidance_fid_outcomes():
    assert guidance_fid_verdict([5.0, 2.0, 3.0], [5.0, 2.0, 6.0]) is True  # rises 1 vs 4
    assert guidance_fid_verdict([5.0, 2.0, 6.0], [5.0, 2.0, 3.0]) is False
    assert guidance_fid_verdict([1.0, 3.0], [10.0, 12.0]) is False  # equal rise: not held
    assert guidance_fid_verdict([1.0, 3.0 - EPS], [10.0, 12.0]) is True
    # the rise is from each curve's own best, not from its first point
    assert guidance_fid_verdict([9.0, 1.0, 4.0], [2.0, 3.0, 4.0]) is False  # 3 vs 2


# ----------------------------------------------------------------------------- 8. PCA


ENCODED = dict.fromkeys(("background", "colour", "size", "position", "shape", "fill"), 0.9)


def test_pca_encoded_threshold():
    above = {"background": 0.2, "colour": 0.2 - EPS, "size": 0.9, "shape": -0.1}
    assert pca_encoded(above) == ["background", "size"]


def test_pca_outcomes():
    k90 = {"background": 1, "colour": 2, "size": 2, "position": 8, "shape": 16, "fill": 32}
    assert pca_verdict(k90, ENCODED) == (True, 2, 24)
    late = {"background": 16, "colour": 32, "size": 32, "position": 64, "shape": 2, "fill": 4}
    assert pca_verdict(late, ENCODED) == (False, 32, 3)
    tie = {"background": 4, "colour": 4, "size": 4, "position": 4, "shape": 2, "fill": 6}
    assert pca_verdict(tie, ENCODED) == (False, 4, 4)  # equal medians: not below


def test_pca_only_encoded_attributes_count():
    k90 = {"background": 64, "colour": 1, "size": 4, "position": None, "shape": 3, "fill": None}
    above = {**ENCODED, "background": 0.2 - EPS, "position": 0.0, "fill": 0.19}
    assert pca_verdict(k90, above) == (True, 2.5, 3)  # colour, size vs shape
    assert pca_verdict(k90, {**above, "background": 0.2}) == (False, 4, 3)  # background (64) encoded at 0.2
    held, coarse, fine = pca_verdict(k90, {**above, "shape": 0.1})
    assert (held, coarse, fine) == (None, 2.5, None)  # no encoded fine attribute: inconclusive
    assert pca_verdict(k90, {**above, "colour": 0.0, "size": 0.0}) == (None, None, 3)
    nothing = dict.fromkeys(ENCODED, 0.0)
    assert pca_verdict(dict.fromkeys(ENCODED), nothing) == (None, None, None)


# ----------------------------------------------------------------------------- 2. the prior matters


def test_prior_matters_order():
    assert prior_matters_verdict(1.0, 2.0, 3.0) is True
    assert prior_matters_verdict(2.0, 1.0, 3.0) is False
    assert prior_matters_verdict(1.0, 3.0, 2.0) is False
    assert prior_matters_verdict(3.0, 2.0, 1.0) is False
    assert prior_matters_verdict(1.0, 1.0, 3.0) is False and prior_matters_verdict(1.0, 3.0, 3.0) is False  # ties
    assert prior_matters_verdict(1.0, 1.0 + EPS, 1.0 + 2 * EPS) is True


# ----------------------------------------------------------------------------- 6. text diffs


def test_text_diff_flip_threshold():
    assert text_diff_passes([0.0, 0.25], [1.0, 1.0]) is True  # exactly 0.25 counts
    assert text_diff_passes([0.25, 0.5], [1.0, 1.0]) is True
    assert text_diff_passes([0.0, 0.25 - EPS], [1.0, 1.0]) is False
    assert text_diff_passes([0.5, 0.1, 0.7], [1.0, 0.0, 1.0]) is False  # first and last θ only: 0.2 gain
    assert text_diff_passes([0.0, 0.9, 0.25], [1.0, 0.1, 1.0]) is True
    assert text_diff_passes([0.9, 0.1], [1.0, 1.0]) is False  # the flip rate fell


def test_text_diff_stability_threshold():
    assert text_diff_passes([0.0, 1.0], [1.0, 0.8]) is True  # exactly 0.8 of the start counts
    assert text_diff_passes([0.0, 1.0], [1.0, 0.8 - EPS]) is False
    assert text_diff_passes([0.0, 1.0], [0.5, 0.4]) is True
    assert text_diff_passes([0.0, 1.0], [0.5, 0.4 - EPS]) is False
    assert text_diff_passes([0.0, 1.0], [0.0, 0.0]) is True  # nothing to keep


def test_text_diffs_needs_every_kind():
    assert text_diffs_verdict([True, True]) is True
    assert text_diffs_verdict([True, False]) is False and text_diffs_verdict([False]) is False
    assert text_diffs_verdict([]) is True


# ----------------------------------------------------------------------------- 5. variations


def test_spearman_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([0.1, 0.5, 0.2, 0.9], [1.0, 100.0, 2.0, 1000.0]) == pytest.approx(1.0)  # ranks, not values
    # 1 - 6 Σd² / (n (n² - 1)) with ranks (0, 1, 2, 3) vs (1, 0, 2, 3): 1 - 6 * 2 / 60 = 0.8
    assert spearman([1, 2, 3, 4], [2, 1, 3, 4]) == pytest.approx(0.8)
    assert math.isnan(spearman([1.0], [2.0]))


def test_variations_thresholds():
    assert variations_verdict(0.9) is True and variations_verdict(-0.5) is False and variations_verdict(0.3) is None
    assert variations_verdict(0.6) is True and variations_verdict(0.6 - EPS) is None
    assert variations_verdict(0.0) is False and variations_verdict(EPS) is None
    assert variations_verdict(float("nan")) is None and variations_verdict(None) is None
    # six attributes: ρ = 1 - 6 Σd² / 210; one adjacent swap -> 0.943 (held), reversed -> -1 (not held)
    a = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert variations_verdict(spearman(a, [0.2, 0.1, 0.3, 0.4, 0.5, 0.6])) is True
    assert variations_verdict(spearman(a, a[::-1])) is False
    b = [0.3, 0.1, 0.2, 0.6, 0.4, 0.5]  # ranks 2 0 1 5 3 4: d = 2 -1 -1 2 -1 -1, Σd² = 12 -> 0.657
    assert spearman(a, b) == pytest.approx(1 - 6 * 12 / 210) and variations_verdict(spearman(a, b)) is True
    c = [0.4, 0.1, 0.6, 0.2, 0.3, 0.5]  # ranks 3 0 5 1 2 4: d = 3 -1 3 -2 -2 -1, Σd² = 28 -> 0.2
    assert spearman(a, c) == pytest.approx(0.2) and variations_verdict(spearman(a, c)) is None


def test_competence_failures_both_sides_of_the_gate():
    assert V.COMPETENCE_MIN == 0.7
    assert V.competence_failures({"a": 0.7, "b": 0.95}) == []  # at the minimum passes
    assert V.competence_failures({"a": 0.6999, "b": 0.95}) == ["a"]
    assert V.competence_failures({"b": 0.1, "a": 0.2, "c": 0.05}, minimum=0.15) == ["b", "c"]  # mapping order
    assert V.competence_failures({"a": float("nan"), "b": None, "c": 0.9}) == ["a", "b"]  # no number fails
    assert V.competence_failures({"a": 0.5}, minimum=0.0) == []
    assert V.competence_failures({}) == []


def test_competence_gate_verdict_and_record():
    from unclip.experiments.common import Verdict, competence_gate, gate_markdown

    held = Verdict(True, "unCLIP wins")
    verdict, record = competence_gate(held, {"u": 0.82, "c": 0.55}, {"u": "unCLIP", "c": "caption-only"}, 0.7)
    assert verdict.not_run and verdict.held is None and verdict.label == "not run"
    assert verdict.summary.startswith("not run: model caption-only at 0.55") and "unCLIP 0.82" in verdict.summary
    assert record == {"minimum": 0.7, "best_accuracy": {"u": 0.82, "c": 0.55}, "failed": ["c"],
                      "labels": {"u": "unCLIP", "c": "caption-only"}}  # fmt: skip
    assert "unCLIP 0.820 (passed)" in gate_markdown(record) and "caption-only 0.550 (failed)" in gate_markdown(record)
    passed, record = competence_gate(held, {"u": 0.82, "c": 0.71}, {}, 0.7)
    assert passed is held and record["failed"] == [] and record["labels"] == {"u": "u", "c": "c"}


def test_eclipse_verdict_both_sides_of_each_threshold():
    m = V.ECLIPSE_COS_MARGIN
    assert m == 0.02
    n = 400
    se = math.sqrt(2 * 0.8 * 0.2 / n)  # both accuracies near 0.8
    # cosine within the margin, accuracy within 1.96 se: held
    assert V.eclipse_verdict(0.80, 0.80 - m + 1e-9, 0.8, 0.8, n)[0] is True
    assert V.eclipse_verdict(0.80, 0.81, 0.8, 0.8 - 1.9 * se, n)[0] is True
    # both beyond: not held
    assert V.eclipse_verdict(0.80, 0.80 - m - 1e-3, 0.8, 0.8 - 2.5 * se, n)[0] is False
    # one beyond, one within: inconclusive
    assert V.eclipse_verdict(0.80, 0.80 - m - 1e-3, 0.8, 0.8, n)[0] is None
    assert V.eclipse_verdict(0.80, 0.80, 0.8, 0.8 - 2.5 * se, n)[0] is None
    held, got_se = V.eclipse_verdict(0.5, 0.5, 0.8, 0.8, n)
    assert got_se == pytest.approx(se)


def test_bootstrap_mean_interval():
    mean, low, high = V.bootstrap_mean_interval([0.3] * 7)
    assert mean == low == high == pytest.approx(0.3)
    values = [0.0, 1.0] * 50
    mean, low, high = V.bootstrap_mean_interval(values, draws=4000, seed=1)
    assert mean == 0.5 and low < 0.5 < high
    # the normal approximation of the mean's 95 % interval: 0.5 +- 1.96 * 0.5 / sqrt(100)
    assert low == pytest.approx(0.5 - 0.098, abs=0.02) and high == pytest.approx(0.5 + 0.098, abs=0.02)
    assert V.bootstrap_mean_interval(values, seed=3) == V.bootstrap_mean_interval(values, seed=3)
    assert V.bootstrap_mean_interval([float("nan"), 1.0, None])[0] == 1.0
    assert all(math.isnan(x) for x in V.bootstrap_mean_interval([float("nan")]))


def test_bootstrap_intervals_match_the_normal_approximation():
    ones = np.array([0.0, 1.0] * 50)
    ((low, high),) = V.bootstrap_intervals([100], lambda i: [ones[i].mean()], draws=4000, seed=1)
    # the mean of 100 fair coins: 0.5 +- 1.96 * 0.5 / sqrt(100)
    assert low == pytest.approx(0.5 - 0.098, abs=0.02) and high == pytest.approx(0.5 + 0.098, abs=0.02)
    # two index sets are resampled independently: the difference of two such means has sqrt(2) times the spread
    ((low, high),) = V.bootstrap_intervals([100, 100], lambda i, j: [ones[i].mean() - ones[j].mean()], draws=4000)
    assert low == pytest.approx(-0.139, abs=0.025) and high == pytest.approx(0.139, abs=0.025)
    # every statistic of a draw sees the same resample: a statistic and its mirror give mirrored intervals
    (a_low, a_high), (b_low, b_high) = V.bootstrap_intervals([100], lambda i: [ones[i].mean(), 1 - ones[i].mean()])
    assert (a_low, a_high) == pytest.approx((1 - b_high, 1 - b_low))
    assert (
        V.bootstrap_interval([100], lambda i: ones[i].mean(), seed=4)
        == V.bootstrap_intervals([100], lambda i: [ones[i].mean()], seed=4)[0]
    )
    # NaN draws are dropped; all-NaN gives NaNs; empty index sets are refused
    half_nan = V.bootstrap_interval([100], lambda i: float("nan") if ones[i].mean() > 0.5 else ones[i].mean())
    assert half_nan[1] <= 0.5
    assert all(math.isnan(x) for x in V.bootstrap_interval([3], lambda i: float("nan")))
    with pytest.raises(ValueError, match=r"\[0\]"):
        V.bootstrap_interval([0], lambda i: 0.0)
    assert V.format_interval(0.8312, (0.74, 0.9)) == "0.83 [0.74, 0.90]"


def test_models_cell_names_the_model_a_run_used():
    from unclip.experiments.report import models_cell

    assert models_cell({"command": "unclip experiment pca --budget full --pipeline shapes"}) == "built-in `shapes`"
    assert models_cell({"command": "unclip experiment pca --shapes-run runs/shapes4"}) == "`runs/shapes4`"
    assert models_cell({"command": "unclip experiment pca --pipeline /x/pipe --shapes-run r"}) == "`/x/pipe`"
    assert models_cell({"command": "unclip experiment pca --budget quick"}) == "built-in `shapes`"
    assert models_cell({}) == "built-in `shapes`"


def test_readme_applies_the_gate_to_rows_recorded_before_it(tmp_path):
    import json

    from unclip.experiments.report import write_readme

    def write(name, number, results, decoders="quick", label="did not hold"):
        data = {
            "number": number,
            "name": name,
            "budget": "quick",
            "command": f"unclip experiment {name}",
            "settings": {"decoders": {"name": decoders}},
            "results": results,
            "verdict": {"held": False, "label": label, "summary": f"{name} summary", "not_run": False},
        }
        (tmp_path / f"{name}.json").write_text(json.dumps(data))

    sweep = {
        "unclip": {"1": {"mean_accuracy": 0.40}, "2": {"mean_accuracy": 0.44}},
        "caption": {"1": {"mean_accuracy": 0.80}},
    }
    write("diversity", 1, {"results": sweep})
    write("binding", 7, {}, label="inconclusive")  # measured with experiment 1's decoders: takes its numbers
    write(
        "guidance_fid",
        4,
        {
            "fd_and_accuracy": {
                "unclip": {"1": {"accuracy": {"mean": 0.75}}},
                "caption": {"1": {"accuracy": {"mean": 0.9}}},
            }
        },
    )
    rows: dict[str, str] = {}
    for line in write_readme(tmp_path).read_text().splitlines():  # the first table only (the commands table repeats #)
        if line.startswith("| ") and line.split("|")[1].strip().isdigit():
            rows.setdefault(line.split("|")[1].strip(), line)
    assert "not run: model unCLIP (prior + decoder) at 0.44 (" in rows["1"] and "**not run**" in rows["1"]
    assert "unCLIP (prior + decoder) 0.44 ✗, caption-only decoder (GLIDE-like) 0.80 ✓" in rows["1"]
    assert 'its page reads "did not hold"' in rows["1"]
    assert "**not run**" in rows["7"] and 'its page reads "inconclusive"' in rows["7"]
    assert "**did not hold**" in rows["4"] and "0.75 ✓" in rows["4"] and "from the recorded numbers" in rows["4"]
    write("binding", 7, {}, decoders="full", label="inconclusive")  # other decoders: nothing to read the gate from
    rows7 = [line for line in write_readme(tmp_path).read_text().splitlines() if line.startswith("| 7 |")][0]
    assert "**not run**" in rows7 and "not checked (run before the gate)" in rows7
    assert "gate cannot be checked" in rows7 and 'reads "inconclusive"' in rows7


def test_bias_corrected_bootstrap_centres_a_statistic_that_resampling_shrinks():
    x = np.random.default_rng(0).normal(size=20)
    var = float(x.var())  # plug-in variance: a resample's repeated values lower it by about (n - 1) / n
    ((low, high),) = V.bootstrap_intervals([20], lambda i: [x[i].var()], draws=4000, seed=2)
    ((c_low, c_high),) = V.bootstrap_intervals([20], lambda i: [x[i].var()], draws=4000, seed=2, bias_corrected=True)
    shift = c_low - low
    assert shift == pytest.approx(c_high - high) and shift > 0  # the same draws, moved up by the estimated bias
    assert shift == pytest.approx(var / 20, rel=0.25)  # E[var of a resample] = var (n - 1) / n
    assert c_low < var < c_high


def test_sweep_unit_intervals_cover_the_closed_form_fd_and_the_accuracy():
    """unit_intervals on Gaussian features whose FD is known in closed form (equal covariances, means apart by
    |d|^2 = 4: FD = 4) and on scores of known accuracy: both intervals hold the true value and are not wide."""
    import torch

    from unclip.experiments.sweep import unit_intervals

    g = torch.Generator().manual_seed(0)
    dim = 8
    shift = torch.zeros(dim)
    shift[:4] = 1.0
    features = torch.randn(2000, dim, generator=g, dtype=torch.float64) + shift
    reference = torch.randn(2000, dim, generator=g, dtype=torch.float64)
    right = (torch.rand(600, generator=g) < 0.7).tolist()
    scores = [{"shape": r, "colour": True, "count": True} for r in right]  # mean over shape and colour
    out = unit_intervals(features, scores, reference, seed=1, fd_draws=100)
    low, high = out["fd"]
    assert low < 4.0 < high and high - low < 1.0
    truth = (0.7 + 1.0) / 2
    low, high = out["accuracy"]
    assert low < truth < high and high - low < 0.06


def test_binding_rate_interval_matches_the_normal_approximation():
    from unclip.experiments.binding import rate_interval

    low, high = rate_interval(0.3, 400)
    half = 1.96 * (0.3 * 0.7 / 400) ** 0.5
    assert abs(low - (0.3 - half)) < 0.01 and abs(high - (0.3 + half)) < 0.01
    assert rate_interval(0.0, 200) == (0.0, 0.0)
