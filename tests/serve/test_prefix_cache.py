"""A prompt's opening shared with an earlier prompt is prefilled once: the next prompt
prefills only what follows it, and its greedy tokens are the ones a full prefill gives."""

from __future__ import annotations

from tunesmith.serve.continuous import RunningBatch
from tunesmith.serve.decoding import Job, Row, Sampling
from tunesmith.serve.prefix_cache import MIN_SHARED_TOKENS, PrefixCache
from tunesmith.serve.registry import Registry

QUESTIONS = ["What is two plus two?", "capital of France?", "say goodbye", "a number"]
SYSTEM = "You answer questions about numbers and capitals, briefly."


def _job(served, question: str) -> Job:
    tokenizer = served.tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        add_generation_prompt=True,
        tokenize=False,
    )
    row = Row(
        index=0, prompt_ids=tokenizer(prompt, add_special_tokens=False)["input_ids"],
        max_new_tokens=12, stop_strings=[], stop_ids=[], tokenizer=tokenizer, strip=True,
        emit=lambda event: None,
    )  # fmt: skip
    return Job(served.module, served.adapter, [row], Sampling(), served.pad_id, served.precision)


def _decode(served_jobs: list[Job], prefixes: PrefixCache) -> list[list[int]]:
    first = served_jobs[0]
    batch = RunningBatch(first.module, first.precision, first.pad_id, True, prefixes)
    batch.admit(served_jobs)
    while len(batch):
        batch.step()
    return [job.rows[0].tokens for job in served_jobs]


def test_a_shared_opening_is_reused_and_changes_no_greedy_token(tiny_runs) -> None:
    registry = Registry(device="cpu")
    for run in tiny_runs:
        registry.add(run)
    alpha, beta = registry.models["alpha"], registry.models["beta"]
    prefixes = PrefixCache()
    _decode([_job(alpha, QUESTIONS[0])], prefixes)
    opening = _job(beta, QUESTIONS[1]).rows[0].prompt_ids
    assert prefixes.lookup(beta.module, "beta", opening) is None  # adapters change the states
    _decode([_job(beta, QUESTIONS[0])], prefixes)

    later = [_job(model, question) for model in (alpha, beta) for question in QUESTIONS[1:]]
    for job in later:  # every later prompt finds its adapter's opening kept
        kept = prefixes.lookup(job.module, job.adapter, job.rows[0].prompt_ids)
        assert kept is not None and kept[0][0].shape[-2] >= MIN_SHARED_TOKENS
    reused = _decode(later, prefixes)
    fresh = [_job(model, question) for model in (alpha, beta) for question in QUESTIONS[1:]]
    assert reused == _decode(fresh, PrefixCache())
    assert all(len(tokens) == 12 for tokens in reused)
