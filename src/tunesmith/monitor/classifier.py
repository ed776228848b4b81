"""A domain classifier: can a linear model tell the window from the reference?

Logistic regression with an L2 penalty, fitted by Newton's method (IRLS) in numpy on
the embeddings projected onto the reference's top principal components, scored by
stratified k-fold cross-validated ROC AUC. AUC 0.5 means the window looks like the
training inputs; near 1 it is another kind of text. The out-of-fold scores of the
window's inputs rank them by how characteristic of the window (unlike training) they
are: the most drifted inputs, written to ``to_label.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FOLDS = 5
COMPONENTS = 32
PENALTY = 1.0
NEWTON_STEPS = 12


def principal_axes(
    reference: np.ndarray, components: int = COMPONENTS
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and top right-singular vectors of the reference: a fixed, cheap projection."""
    mean = reference.mean(0)
    _, _, vt = np.linalg.svd(reference - mean, full_matrices=False)
    return mean, vt[: min(components, vt.shape[0])].T


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann–Whitney AUC with ties given their average rank; labels are 0/1."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    positives = labels == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_logistic(x: np.ndarray, y: np.ndarray, penalty: float = PENALTY) -> np.ndarray:
    """Weights (intercept last) of an L2-penalised logistic regression, by IRLS."""
    design = np.hstack([x, np.ones((len(x), 1))])
    weights = np.zeros(design.shape[1])
    ridge = penalty * np.eye(design.shape[1])
    ridge[-1, -1] = 0.0
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ weights, -30, 30)))
        gradient = design.T @ (p - y) + ridge @ weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design + ridge + 1e-8 * np.eye(len(weights))
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-6:
            break
    return weights


@dataclass(frozen=True)
class DomainScore:
    auc: float
    window_scores: np.ndarray
    """Out-of-fold logit of each window input: higher = more unlike the reference."""


def domain_auc(window: np.ndarray, reference: np.ndarray, seed: int) -> DomainScore:
    """Cross-validated AUC of window (label 1) against reference (label 0)."""
    x = np.concatenate([window, reference]).astype(np.float64)
    y = np.concatenate([np.ones(len(window)), np.zeros(len(reference))])
    folds = _stratified_folds(y, seed)
    scores = np.empty(len(y))
    for k in range(FOLDS):
        test = folds == k
        weights = fit_logistic(x[~test], y[~test])
        scores[test] = np.hstack([x[test], np.ones((int(test.sum()), 1))]) @ weights
    return DomainScore(roc_auc(y, scores), scores[: len(window)])


def _stratified_folds(y: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    folds = np.empty(len(y), dtype=np.int64)
    for value in (0.0, 1.0):
        members = np.flatnonzero(y == value)
        rng.shuffle(members)
        folds[members] = np.arange(len(members)) % FOLDS
    return folds
