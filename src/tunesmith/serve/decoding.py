"""The decoder: one thread owns the models; requests queue up and are decoded in batches.

Each batch is one ``model.generate`` call with left padding, the call `tunesmith eval`
and `generate` make (same stop tokens, same greedy settings), so a served answer is
the evaluated answer. Rows of one batch may belong to different adapters of the same
base: peft's mixed-adapter batches (``adapter_names``) pick each row's adapter, and
``__base__`` is the base itself.

What is shared by the rows of a batch: the module (one base or one full fine-tune)
and the sampling settings (greedy rows go together; a sampled request with a seed
runs alone, so its seed means the same thing every time). Per row: the prompt, the
token limit, the stop strings, and whether its client is still listening.

A row's text is decoded incrementally inside a stopping criterion, which sees every
new token of every row before generation continues; that is where stop strings,
limits and cancelled clients end a row early.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from tunesmith.evaluate.generate import left_padded
from tunesmith.models.precision import Precision
from tunesmith.serve.continuous import RunningBatch, supports
from tunesmith.serve.prefix_cache import PrefixCache

Emit = Callable[[tuple[Any, ...]], None]
"""Receives ("text", row, piece), ("done", row, finish_reason, tokens) or ("error", message)."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def batch_key(self) -> tuple[object, ...]:
        return ("greedy",) if self.greedy else (self.temperature, self.top_p, self.seed, id(self))


@dataclass
class Row:
    """One choice of one request: its prompt, limits, and the text produced so far."""

    index: int
    prompt_ids: list[int]
    max_new_tokens: int
    stop_strings: list[str]
    stop_ids: list[int]
    tokenizer: PreTrainedTokenizerBase
    strip: bool
    emit: Emit
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0
    done: bool = False
    cancelled: bool = False

    def accept(self, token: int) -> None:
        """One new token: extend the text, send what is certain, finish if a limit is hit."""
        if self.done:
            return
        if self.cancelled:
            self.done = True
            return
        if token in self.stop_ids:
            self._finish("stop")
            return
        self.tokens.append(token)
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        for stop in self.stop_strings:
            at = self.text.find(stop)
            if at >= 0:
                self.text = self.text[:at]
                self._finish("stop")
                return
        if len(self.tokens) >= self.max_new_tokens:
            self._finish("length")
            return
        self._send(self._certain())

    def _visible(self) -> str:
        return self.text.lstrip() if self.strip else self.text

    def _certain(self) -> str:
        """The text no later token can change: no partial UTF-8 character at the end, no
        possible start of a stop string, and (when stripping) no trailing whitespace."""
        text = self._visible().rstrip("\ufffd")
        for stop in self.stop_strings:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    text = text[:-size]
                    break
        return text.rstrip() if self.strip else text

    def _send(self, text: str) -> None:
        if len(text) > self.sent:
            self.emit(("text", self.index, text[self.sent :]))
            self.sent = len(text)

    def _finish(self, reason: str) -> None:
        """The final text is what `tunesmith generate` returns: special tokens dropped and,
        for chat, stripped; what was streamed before is always a prefix of it."""
        self.done = True
        final = self.text.strip() if self.strip else self.text
        self.text = final
        self._send(final)
        self.emit(("done", self.index, reason, len(self.tokens)))

    def close(self) -> None:
        """Generation ended without this row finishing on its own: it reached the limit."""
        if not self.done:
            self._finish("length")


@dataclass
class Job:
    """One request's rows, on one module: a plain model, or an adapter of a shared base
    (``adapter`` names it; ``"__base__"`` is the base itself)."""

    module: nn.Module
    adapter: str | None
    rows: list[Row]
    sampling: Sampling
    pad_id: int
    precision: Precision
    """The module's precision rule; one module, one precision, so a batch shares it."""
    enqueued: float = field(default_factory=time.monotonic)

    def fail(self, message: str) -> None:
        for row in self.rows:
            if not row.done:
                row.done = True
                row.emit(("error", message))


class _RowsCriterion(StoppingCriteria):
    """Feeds every new token to its row; a row is finished when the row says so."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs):
        for row, token in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            row.accept(token)
        return torch.tensor([row.done for row in self.rows], device=input_ids.device)


class _Call:
    def __init__(self, function: Callable[[], object]) -> None:
        self.function = function
        self.done = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.function()
        except BaseException as error:  # handed to the caller's thread
            self.error = error
        self.done.set()


class Decoder:
    """The one thread that runs the models, between steps also loading and unloading runs.

    Greedy requests decode in continuous batches (`tunesmith.serve.continuous`): one
    running batch per module, which requests join between decode steps and leave when done.
    Sampled requests (and modules whose generation config processes logits) are decoded by
    ``generate`` in a batch of compatible waiting requests, as before. ``max_batch`` caps the
    rows decoded together in either.
    """

    def __init__(self, max_batch: int = 8, on_batch: Callable[[list[Job]], None] | None = None):
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._waiting: list[Job | _Call] = []
        self._running: list[RunningBatch] = []
        self._prefixes = PrefixCache()
        self._ready = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tunesmith-decoder", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._ready:
            self._waiting.append(job)
            self._ready.notify()

    def waiting(self) -> int:
        with self._ready:
            return len(self._waiting)

    def call(self, function: Callable[[], object], timeout: float | None = None) -> object:
        """Run ``function`` on the decoder thread once the work before it is done."""
        item = _Call(function)
        with self._ready:
            self._waiting.append(item)
            self._ready.notify()
        item.done.wait(timeout)
        if item.error is not None:
            raise item.error
        return item.result

    def stop(self) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._waiting and not self._running and not self._stopping:
                    self._ready.wait()
                if self._stopping:
                    self._fail_everything("the server is shutting down")
                    return
                call, joining, static = self._plan()
            if call is not None:
                self._prefixes.clear()  # a run loaded again may reuse an adapter's name
                call.run()
                continue
            try:
                self._work(joining, static)
            except Exception as error:  # one bad batch must not stop the server
                message = f"generation failed: {type(error).__name__}: {error}"
                for job in static or []:
                    job.fail(message)
                for running in self._running:
                    running.fail(message)
                self._running.clear()

    def _work(
        self, joining: list[tuple[RunningBatch, list[Job]]], static: list[Job] | None
    ) -> None:
        for running, jobs in joining:
            if self.on_batch is not None:
                self.on_batch(jobs)
            if running not in self._running:
                self._running.append(running)
            running.admit(jobs)
        if static:
            self._decode(static)
        for running in list(self._running):
            if len(running):
                running.step()
            if not len(running):
                self._running.remove(running)

    def _plan(self) -> tuple[_Call | None, list[tuple[RunningBatch, list[Job]]], list[Job] | None]:
        """Under the lock: greedy jobs join their module's running batch while it has room;
        the first other job starts a ``generate`` batch; a load or unload runs once nothing
        before it is left (it is never overtaken)."""
        joining: dict[int, tuple[RunningBatch, list[Job]]] = {}
        static: list[Job] | None = None
        for item in list(self._waiting):
            if isinstance(item, _Call):
                break
            if not (item.sampling.greedy and supports(item.module)):
                if static is None:
                    static = [item]
                    self._waiting.remove(item)
                    self._take_compatible(static)
                continue
            running = self._batch_for(item, joining)
            planned = len(running) + sum(
                len(j.rows) for j in joining.get(id(running), (None, []))[1]
            )
            if planned + len(item.rows) <= self.max_batch or planned == 0:
                joining.setdefault(id(running), (running, []))[1].append(item)
                self._waiting.remove(item)
        head = self._waiting[0] if self._waiting else None
        if isinstance(head, _Call) and not self._running and not joining and static is None:
            self._waiting.pop(0)
            return head, [], None
        return None, list(joining.values()), static

    def _batch_for(
        self, job: Job, joining: dict[int, tuple[RunningBatch, list[Job]]]
    ) -> RunningBatch:
        for running in [*self._running, *(r for r, _ in joining.values())]:
            if running.fits(job):
                return running
        return RunningBatch(
            job.module, job.precision, job.pad_id, job.adapter is not None, self._prefixes
        )

    def _fail_everything(self, message: str) -> None:
        for item in self._waiting:
            if isinstance(item, Job):
                item.fail(message)
        for running in self._running:
            running.fail(message)

    def _take_compatible(self, batch: list[Job]) -> None:
        first = batch[0]
        rows = len(first.rows)
        for item in list(self._waiting):
            if isinstance(item, _Call):
                break  # a load or unload waits for the batches before it, no overtaking
            compatible = (
                item.module is first.module
                and item.sampling.batch_key() == first.sampling.batch_key()
                and (item.adapter is None) == (first.adapter is None)
            )
            if compatible and rows + len(item.rows) <= self.max_batch:
                batch.append(item)
                rows += len(item.rows)
                self._waiting.remove(item)

    @torch.inference_mode()
    def _decode(self, batch: list[Job]) -> None:
        if self.on_batch is not None:
            self.on_batch(batch)
        rows = [row for job in batch for row in job.rows]
        rows = [row for row in rows if not row.cancelled]
        if not rows:
            return
        first = batch[0]
        module = first.module
        input_ids, attention_mask = left_padded([row.prompt_ids for row in rows], first.pad_id)
        stop_ids = sorted({token for row in rows for token in row.stop_ids})
        options: dict[str, object] = {
            "max_new_tokens": max(row.max_new_tokens for row in rows),
            "eos_token_id": stop_ids,
            "pad_token_id": first.pad_id,
            "stopping_criteria": StoppingCriteriaList([_RowsCriterion(rows)]),
        }
        sampling = first.sampling
        if sampling.greedy:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            options["top_k"] = 0
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        if first.adapter is not None:
            options["adapter_names"] = [
                job.adapter for job in batch for row in job.rows if not row.cancelled
            ]
        device = next(module.parameters()).device
        with first.precision.autocast(device):
            module.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **options
            )
        for row in rows:
            row.close()
