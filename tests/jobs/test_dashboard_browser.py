"""The dashboard in headless Chromium: log in, upload, start a job on the tiny model,
watch it succeed with its loss curve, ask the fine-tuned model and its base, compare;
pause, resume and cancel a long job with the job page's buttons.

Every page's screenshot must show something, and the browser may ask nothing of any
origin but this server (no CDN, no network).
"""

from __future__ import annotations

from pathlib import Path

from openai import OpenAI

from ..browser import CHROMIUM, CHROMIUM_ARGS, chromium_or_skip, is_blank
from ..conftest import FACTS
from ..serve.conftest import API_KEY
from .conftest import LEARNING_RATE_MULTIPLIER, TINY_OVERRIDES, facts_file

ANSWERS = {answer for _, answer in FACTS}
EVALUATED = [  # the tiny job with a test split and a short evaluation, for its report.html
    *(o for o in TINY_OVERRIDES if not o.startswith(("eval.enabled", "data.split"))),
    "data.split=[0.7,0.15,0.15]", "eval.enabled=true", "eval.max_items=4",
    "eval.max_new_tokens=8", "eval.k_shot=1",
]  # fmt: skip


def _shot(page, name: str, out: Path) -> None:
    png = page.screenshot(full_page=True, path=str(out / f"{name}.png"))
    assert not is_blank(png), f"the {name} page rendered blank"


def _log_in(page, root: str, out: Path) -> None:
    page.goto(root + "/")
    assert page.url == root + "/login"  # no session: the pages send the browser to the login
    _shot(page, "login", out)
    page.fill("#api-key", API_KEY)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(root + "/")
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["tunesmith_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert API_KEY not in page.content() and API_KEY not in page.url
    assert page.evaluate("document.cookie") == ""  # scripts cannot read the session


def _upload_and_start(page, root: str, tmp_path: Path, out: Path) -> str:
    page.goto(root + "/new")
    page.set_input_files("#upload-file", str(facts_file(tmp_path)))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#files tbody tr td:text('facts.jsonl')")
    assert page.input_value("#training-file").startswith("file-")
    page.select_option("#model", "tiny")
    page.fill("#batch-size", "4")
    page.fill("#lr-multiplier", str(LEARNING_RATE_MULTIPLIER))
    page.fill("#suffix", "dash")
    page.fill("#seed", "3")
    page.fill("#overrides", "\n".join(EVALUATED))
    _shot(page, "new-job", out)
    page.click("#create-job")
    page.wait_for_url(root + "/jobs/ftjob-*")
    # The side-by-side form stays hidden until its two models are known: a class that sets
    # `display` must not override the `hidden` attribute (a fresh load could submit model null)
    assert page.is_hidden("#side-form")
    return page.url.rsplit("/", 1)[-1]


def _watch_until_succeeded(page, out: Path) -> None:
    page.wait_for_selector("body[data-status=running], body[data-status=succeeded]",
                           timeout=60_000)  # fmt: skip
    page.wait_for_selector("body[data-status=succeeded]", timeout=150_000)
    page.wait_for_function(  # an arrow function: the page's CSP forbids eval'd strings
        "() => (document.querySelector('#loss-chart path[data-series=\"training loss\"]')"
        " ?.getAttribute('d') || '').split('L').length >= 40"
    )
    assert page.locator("#events tbody tr").count() >= 40
    assert "New fine-tuned model created" in page.inner_text("#events")
    assert page.locator("#checkpoints tbody tr").count() >= 1
    assert page.is_disabled("#cancel") and page.is_disabled("#pause")
    page.wait_for_selector("#data-report table")
    page.wait_for_selector("#side-form:not([hidden])")
    page.wait_for_selector("#report:not([hidden])")
    report = page.frame_locator("#report")
    assert "fine-tuned" in report.locator("table.comparison thead").inner_text()
    _shot(page, "job", out)


def _ask_both(page, prompt_selector: str, submit: str, text: str) -> list[str]:
    page.fill(prompt_selector, text)
    page.click(submit)
    page.wait_for_function("() => document.querySelectorAll('.answer .answer-text').length === 2")
    return page.locator(".answer .answer-text").all_inner_texts()


def _pause_resume_cancel(page, root: str, client: OpenAI, file_id: str) -> None:
    """The job page's buttons on a long job: pause → paused, resume → running, cancel."""
    long = [*TINY_OVERRIDES, "train.max_steps=400", "train.save_every=10"]
    job = client.fine_tuning.jobs.create(
        model="tiny", training_file=file_id, extra_body={"tunesmith": {"overrides": long}}
    )
    page.goto(root + f"/jobs/{job.id}")
    page.wait_for_selector("body[data-status=running]", timeout=60_000)
    page.click("#pause")
    page.wait_for_selector("body[data-status=paused]", timeout=60_000)
    assert page.is_enabled("#resume") and page.is_disabled("#pause")
    page.click("#resume")
    page.wait_for_selector("body[data-status=running]", timeout=60_000)
    page.click("#cancel")
    page.wait_for_selector("body[data-status=cancelled]", timeout=60_000)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


def test_log_in_upload_train_watch_and_chat(jobs_server, worker, tmp_path: Path) -> None:
    chromium_or_skip("drive the dashboard")
    from playwright.sync_api import sync_playwright

    root, out = jobs_server.root_url, tmp_path / "screens"
    out.mkdir()
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.on("request", lambda request: requested.append(request.url))
            _log_in(page, root, out)
            job_id = _upload_and_start(page, root, tmp_path, out)
            _watch_until_succeeded(page, out)
            page.goto(root + f"/jobs/{job_id}/report")  # the run's report.html on its own
            assert page.locator("table.comparison tbody tr").count() >= 1
            _shot(page, "report", out)
            page.go_back()
            fine_tuned = f"ft:tiny:local:dash:{job_id}"
            assert fine_tuned in page.inner_text("#job-summary")
            answers = _ask_both(page, "#side-prompt", "#side-form button", "capital of France? (0)")
            assert answers[0].strip() in ANSWERS  # the fine-tuned model learned the facts

            page.goto(root + "/playground")
            page.wait_for_function(
                f"() => document.querySelector('#model-a').value === {fine_tuned!r}"
            )
            assert page.input_value("#model-b") != ""  # its base, preselected
            answers = _ask_both(page, "#message", "#send", "capital of France? (0)")
            assert answers[0].strip() in ANSWERS
            _shot(page, "playground", out)

            page.goto(root + "/")
            page.wait_for_selector(f"#jobs tr[data-job='{job_id}'] .status-succeeded")
            page.wait_for_selector(f"#models td:text-is('{fine_tuned}')")
            _shot(page, "jobs", out)

            page.goto(root + f"/compare?jobs={job_id}")
            page.wait_for_selector("#compare-chart path.series")
            assert "Final training loss" in page.inner_text("#compare-table")
            _shot(page, "compare", out)

            refused = page.evaluate(
                "id => fetch(`/v1/fine_tuning/jobs/${id}/cancel`, {method: 'POST'})"
                ".then(r => r.status)", job_id,
            )  # fmt: skip
            assert refused == 403  # a POST without the CSRF token, even with the cookie

            client = OpenAI(base_url=jobs_server.base_url, api_key=API_KEY, max_retries=0)
            file_id = client.fine_tuning.jobs.retrieve(job_id).training_file
            _pause_resume_cancel(page, root, client, file_id)
        finally:
            browser.close()
    assert all(url.startswith((root, "data:")) for url in requested), [
        url for url in requested if not url.startswith((root, "data:"))
    ]
