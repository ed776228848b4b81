"""Every per-input number the signals need, computed once for reference and live inputs.

Items are laid out as ``[training inputs | live inputs]``; a window (live) or a null
draw (training) is an index array into these columns, so each statistic is computed
from the same arrays whichever side it measures. The training inputs are split once,
by seed, into a *reference* half (what a window is compared with; the vocabulary and
the label distribution come from it) and a *calibration* half (where null windows are
drawn): under no drift a live window and a calibration window are exchangeable draws
measured against the same reference, which is what makes the null exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tunesmith.monitor.classifier import principal_axes
from tunesmith.monitor.descriptors import (
    TokenDescriptors,
    dominant_script,
    is_empty_or_refusal,
    is_valid_json,
    nonletter_share,
    normalised_label,
)
from tunesmith.monitor.encoder import embed_texts
from tunesmith.monitor.mmd import MAX_PER_SIDE

MAX_LABELS = 50


@dataclass
class Features:
    embeddings: np.ndarray
    projected: np.ndarray
    lengths: np.ndarray
    unseen: np.ndarray
    nonletter: np.ndarray
    scripts: np.ndarray
    script_names: list[str]
    labels: np.ndarray | None
    """Label code per item (-1: no answer); None when the task is not a label task."""
    label_names: list[str]
    json_valid: np.ndarray | None
    """1/0 per item, NaN without an answer; None when outputs are not structured."""
    refusal: np.ndarray | None
    """1 for an empty or refusing answer, NaN without one; None when no answers exist."""
    reference: np.ndarray
    calibration: np.ndarray
    embedding_reference: np.ndarray
    """At most `MAX_PER_SIDE` reference items: the sample the embedding tests compare with."""
    live_offset: int
    validation: np.ndarray
    """Items of the run's validation prompts (after the live ones): the perplexity reference."""
    log_perplexity: np.ndarray | None = None
    """Mean token NLL under the fine-tuned model (live and validation items), else NaN."""

    def live(self, positions: np.ndarray) -> np.ndarray:
        """Item indices of live inputs given by their position in the live file."""
        return positions + self.live_offset


def split_reference(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def build_features(
    reference_prompts: Sequence[str],
    reference_answers: Sequence[str | None],
    live_prompts: Sequence[str],
    live_answers: Sequence[str | None],
    tokenizer: object,
    *,
    labelled: bool,
    validation_prompts: Sequence[str] = (),
    seed: int = 0,
    on_embedded: Callable[[int], None] | None = None,
) -> Features:
    """Embed, tokenize and describe all inputs; ``on_embedded`` gets the count embedded."""
    texts = [*reference_prompts, *live_prompts, *validation_prompts]
    answers = [*reference_answers, *live_answers, *([None] * len(validation_prompts))]
    n_ref = len(reference_prompts)
    n_live = len(live_prompts)
    reference, calibration = split_reference(n_ref, seed)
    embeddings = embed_texts(texts, on_progress=on_embedded)
    mean, axes = principal_axes(embeddings[reference])
    tokens = TokenDescriptors(tokenizer)
    tokens.learn([texts[i] for i in reference])
    lengths, unseen = tokens.describe(texts)
    scripts, script_names = _codes([dominant_script(t) for t in texts])
    rng = np.random.default_rng(seed + 1)
    sample = rng.choice(reference, size=min(MAX_PER_SIDE, len(reference)), replace=False)
    features = Features(
        embeddings=embeddings,
        projected=((embeddings - mean) @ axes).astype(np.float32),
        lengths=lengths,
        unseen=unseen,
        nonletter=np.array([nonletter_share(t) for t in texts], dtype=np.float32),
        scripts=scripts,
        script_names=script_names,
        labels=None,
        label_names=[],
        json_valid=None,
        refusal=None,
        reference=reference,
        calibration=calibration,
        embedding_reference=np.sort(sample),
        live_offset=n_ref,
        validation=np.arange(n_ref + n_live, len(texts)),
    )
    return _with_outputs(features, answers, labelled)


def _codes(values: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    names = sorted(set(values))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[v] for v in values], dtype=np.int64), names


def _with_outputs(features: Features, answers: Sequence[str | None], labelled: bool) -> Features:
    """Add the output checks that apply: labels, JSON validity, empty/refusal answers."""
    reference_answers = [answers[i] for i in features.reference]
    live_answers = (
        answers[features.live_offset : features.validation[0]]
        if len(features.validation)
        else answers[features.live_offset :]
    )
    if all(a is None for a in reference_answers) or all(a is None for a in live_answers):
        return features
    has = np.array([a is not None for a in answers])
    features.refusal = np.where(has, [a is not None and is_empty_or_refusal(a) for a in answers],
                                np.nan)  # fmt: skip
    known = [normalised_label(a) for a in reference_answers if a is not None]
    distinct = set(known)
    if labelled or (len(distinct) <= min(MAX_LABELS, max(2, len(known) // 5))):
        names = sorted(distinct)
        index = {name: i for i, name in enumerate(names)}
        other = len(names)
        features.label_names = [*names, "(other)"]
        features.labels = np.array(
            [-1 if a is None else index.get(normalised_label(a), other) for a in answers],
            dtype=np.int64,
        )
    elif sum(is_valid_json(a) for a in known) >= 0.5 * len(known):
        features.json_valid = np.where(has, [a is not None and is_valid_json(a) for a in answers],
                                       np.nan)  # fmt: skip
    return features
