"""Linear probes: how well an attribute can be read linearly from a set of embeddings.

:func:`fit_linear_probe` fits multinomial logistic regression (softmax of an affine map of standardised
features, L2-penalised, full-batch L-BFGS in float64) and :func:`probe_accuracy` reports its held-out
accuracy. Used by the variations experiment (what z_i encodes) and the PCA experiment (what the leading
principal components encode).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class LinearProbe:
    """A fitted probe: ``argmax(standardise(x) @ weight + bias)`` indexes ``classes``.

    Attributes:
        mean, std: [F] feature standardisation (float64).
        weight: [F, C]; bias: [C] (float64).
        classes: the class labels, in logit order.
    """

    mean: Tensor
    std: Tensor
    weight: Tensor
    bias: Tensor
    classes: list[Any]

    def logits(self, x: Tensor) -> Tensor:
        """[N, F] features -> [N, C] logits (float64)."""
        z = (x.detach().to(torch.float64) - self.mean) / self.std
        return z @ self.weight + self.bias

    def predict(self, x: Tensor) -> list[Any]:
        return [self.classes[i] for i in self.logits(x).argmax(-1).tolist()]


def _check(x: Tensor, labels: Sequence[Any]) -> None:
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be a non-empty [N, F] matrix, got shape {tuple(x.shape)}")
    if len(labels) != x.shape[0]:
        raise ValueError(f"{x.shape[0]} feature rows but {len(labels)} labels")


def fit_linear_probe(x: Tensor, labels: Sequence[Any], l2: float = 1e-3, max_iter: int = 200) -> LinearProbe:
    """Fit multinomial logistic regression of ``labels`` on features ``x`` [N, F].

    Minimises ``mean cross-entropy + l2 * |W|^2 / 2`` over standardised features (bias unpenalised).
    A single class gives a constant probe.
    """
    _check(x, labels)
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    classes = sorted(set(labels), key=str)
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[v] for v in labels], dtype=torch.long)
    x64 = x.detach().to(torch.float64)
    mean = x64.mean(0)
    std = x64.std(0, unbiased=False).clamp(min=1e-8)
    z = (x64 - mean) / std
    f, c = z.shape[1], len(classes)
    weight = torch.zeros(f, c, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    if c > 1:
        opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                                tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")  # fmt: skip

        def closure() -> Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(z @ weight + bias, y) + 0.5 * l2 * weight.square().sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
    return LinearProbe(mean, std, weight.detach(), bias.detach(), classes)


def probe_accuracy(
    train_x: Tensor, train_labels: Sequence[Any], test_x: Tensor, test_labels: Sequence[Any], l2: float = 1e-3
) -> float:
    """Held-out accuracy of a probe fitted on the training split."""
    correct = probe_correct(train_x, train_labels, test_x, test_labels, l2=l2)
    return sum(correct) / len(correct)


def probe_correct(
    train_x: Tensor, train_labels: Sequence[Any], test_x: Tensor, test_labels: Sequence[Any], l2: float = 1e-3
) -> list[int]:
    """Per held-out row, 1 where a probe fitted on the training split reads the label right, else 0 (for
    bootstrap intervals over the held-out rows)."""
    _check(test_x, test_labels)
    probe = fit_linear_probe(train_x, train_labels, l2=l2)
    return [int(p == t) for p, t in zip(probe.predict(test_x), test_labels)]


def majority_label(train_labels: Sequence[Any]) -> Any:
    """The most frequent training label (the first seen among equals)."""
    from collections import Counter

    return Counter(train_labels).most_common(1)[0][0]


def majority_accuracy(train_labels: Sequence[Any], test_labels: Sequence[Any]) -> float:
    """Accuracy of always predicting the most frequent training label (the chance level of a probe)."""
    top = majority_label(train_labels)
    return sum(t == top for t in test_labels) / len(test_labels)


PROBE_ATTRIBUTES = ("shape", "colour", "size", "fill", "position", "background")
"""Attributes of a one-object scene that the probes read (the object's, plus the background)."""


def one_object_labels(records: Sequence[dict[str, Any]], rows: Sequence[int]) -> tuple[list[int], dict[str, list]]:
    """The rows whose scene holds one object, and per attribute of :data:`PROBE_ATTRIBUTES` their labels."""
    kept = [r for r in rows if len(records[r]["objects"]) == 1]
    labels = {a: [] for a in PROBE_ATTRIBUTES}
    for r in kept:
        rec = records[r]
        for a in PROBE_ATTRIBUTES:
            labels[a].append(rec["background"] if a == "background" else rec["objects"][0][a])
    return kept, labels


def normalised_above_chance(value: float, chance: float) -> float:
    """``(value - chance) / (1 - chance)``: 0 at chance, 1 at perfect (Cohen's-kappa-like)."""
    return (value - chance) / (1.0 - chance) if chance < 1.0 else 0.0
