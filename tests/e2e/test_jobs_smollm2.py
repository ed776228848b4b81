"""The fine-tuning jobs API on the bundled SmolLM2, driven by the official openai client:
upload → job → events until `succeeded` → chat with the fine-tuned model (a few steps)."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai import OpenAI

from tunesmith.jobs.server import attach_jobs
from tunesmith.serve import build_state, start_in_background

from ..jobs.conftest import TERMINAL, start_worker, wait_for
from ..serve.conftest import API_KEY

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
BASE = "smollm2-135m-instruct"
QUICK = [
    "train.max_steps=3", "train.batch_size=4", "train.eval_every=3",
    "eval.max_items=2", "eval.max_new_tokens=12", "eval.k_shot=1",
]  # fmt: skip


def test_a_job_on_the_bundled_model_ends_in_a_served_fine_tune(tmp_path: Path) -> None:
    state = build_state([], keys=[API_KEY], device="cpu")
    workspace = tmp_path / "workspace"
    attach_jobs(state, workspace)
    with start_in_background(state) as server:
        worker = start_worker(workspace)
        try:
            client = OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
            data = REPO / "examples" / "data" / "support_requests.train.jsonl"
            uploaded = client.files.create(file=data.open("rb"), purpose="fine-tune")
            job = client.fine_tuning.jobs.create(
                model=BASE, training_file=uploaded.id, suffix="support",
                method={"type": "supervised", "supervised": {"hyperparameters": {
                    "n_epochs": 1, "batch_size": 4}}},
                extra_body={"tunesmith": {"overrides": QUICK}},
            )  # fmt: skip
            done = wait_for(client, job.id, TERMINAL, timeout=600)
            assert done.status == "succeeded", done.error
            assert done.fine_tuned_model == f"ft:{BASE}:local:support:{job.id}"
            events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
            assert {e.data["step"] for e in events if e.type == "metrics"} == {1, 2, 3}
            assert done.fine_tuned_model in {m.id for m in client.models.list().data}
            answer = client.chat.completions.create(
                model=done.fine_tuned_model, max_tokens=24, temperature=0,
                messages=[{"role": "user", "content": "Play some jazz by Miles Davis"}],
            )  # fmt: skip
            assert answer.choices[0].message.content.strip()
        finally:
            worker.terminate()
            worker.wait(timeout=60)
