"""The official openai client drives a whole fine-tuning job on a real server and worker."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from openai import OpenAI

from ..conftest import FACTS
from .conftest import LEARNING_RATE_MULTIPLIER, TERMINAL, TINY_OVERRIDES, facts_file, wait_for


def _method() -> dict:
    hyper = {"batch_size": 4, "learning_rate_multiplier": LEARNING_RATE_MULTIPLIER,
             "n_epochs": "auto"}  # fmt: skip
    return {"type": "supervised", "supervised": {"hyperparameters": hyper}}


def test_upload_train_and_chat_with_the_fine_tuned_model(
    client: OpenAI, worker, tmp_path: Path
) -> None:
    uploaded = client.files.create(file=facts_file(tmp_path).open("rb"), purpose="fine-tune")
    assert uploaded.object == "file" and uploaded.filename == "facts.jsonl"
    assert client.files.content(uploaded.id).read() == facts_file(tmp_path).read_bytes()
    job = client.fine_tuning.jobs.create(
        model="tiny", training_file=uploaded.id, suffix="facts", method=_method(), seed=3,
        extra_body={"tunesmith": {"overrides": TINY_OVERRIDES}},
    )  # fmt: skip
    assert job.status == "validating_files" and job.fine_tuned_model is None
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny:local:facts:{job.id}"
    assert done.trained_tokens and done.trained_tokens > 0
    (results,) = done.result_files  # the per-step metrics, as OpenAI's result file
    assert client.files.retrieve(results).purpose == "fine-tune-results"
    rows = client.files.content(results).text.splitlines()
    assert rows[0] == "step,train_loss,valid_loss,learning_rate,tokens,epoch"
    assert [int(row.split(",")[0]) for row in rows[1:]] == list(range(41))
    assert rows[1].split(",")[1:3][0] == "" and rows[1].split(",")[2]  # step 0: validation only
    assert all(row.split(",")[1] for row in rows[2:])  # every step logged its training loss
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    metrics = [e for e in events if e.type == "metrics"]
    assert {e.data["step"] for e in metrics} == set(range(1, 41))
    assert metrics[0].data["train_loss"] < metrics[-1].data["train_loss"]  # newest first
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].fine_tuning_job_id == job.id
    served = [model.id for model in client.models.list().data]
    assert done.fine_tuned_model in served
    answer = client.chat.completions.create(
        model=done.fine_tuned_model, max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": "capital of France? (0)"}],
    )  # fmt: skip
    # The random base says nothing of the sort: the served adapter is the trained one.
    assert answer.choices[0].message.content.strip() in {a for _, a in FACTS}


def test_a_bad_training_file_fails_the_job_with_its_lines(
    client: OpenAI, worker, tmp_path: Path
) -> None:
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{not json\n')
    uploaded = client.files.create(file=bad.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id)
    failed = wait_for(client, job.id, TERMINAL, timeout=60)
    assert failed.status == "failed"
    assert failed.error.param == "training_file"
    assert "broken.jsonl:2" in failed.error.message
    assert str(tmp_path) not in failed.error.message


def test_unknown_fields_are_refused_by_name(client: OpenAI, tmp_path: Path) -> None:
    uploaded = client.files.create(file=facts_file(tmp_path).open("rb"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(
            model="tiny", training_file=uploaded.id, extra_body={"n_epoch": 3}
        )
    assert refused.value.body["param"] == "n_epoch"
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(
            model="tiny", training_file=uploaded.id,
            extra_body={"tunesmith": {"overrides": ["output.dir=/etc"]}},
        )  # fmt: skip
    assert refused.value.body["param"] == "tunesmith.overrides"


def test_jobs_list_pages_with_after_and_has_more(client: OpenAI, tmp_path: Path) -> None:
    uploaded = client.files.create(file=facts_file(tmp_path).open("rb"), purpose="fine-tune")
    ids = [client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id).id
           for _ in range(3)]  # fmt: skip
    first = client.fine_tuning.jobs.list(limit=2)
    assert [job.id for job in first.data] == ids[::-1][:2] and first.has_more
    second = client.fine_tuning.jobs.list(limit=2, after=first.data[-1].id)
    assert [job.id for job in second.data] == [ids[0]] and not second.has_more
