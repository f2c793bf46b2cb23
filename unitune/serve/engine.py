"""The serving engine under both faces of web.py (the API and the page): jobs, the bounded queue, batching.

A Job is one request; its text pieces reach the asyncio side through an asyncio.Queue. The Engine owns
the model in one worker thread: requests run together in a continuous batch (unitune.serve.batching),
up to --max_batch_size at a time, and at most --max_queue more wait (beyond that: 503). Between two
batch steps new requests join and finished or cancelled ones leave; a client that disconnects cancels
its own request only. A backend is a class with this interface (submit, waiting, running, counts,
context_window, close): BACKENDS names them for --infer_backend.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)
_DONE = object()
# how often a waiting response asks whether its client is still there, tokens flowing or not
DISCONNECT_CHECK_S = 0.25
# --infer_backend -> "module:class"; imported when chosen, so vllm is only imported where it is asked for
BACKENDS = {"huggingface": "unitune.serve.engine:Engine", "hf": "unitune.serve.engine:Engine",
            "vllm": "unitune.serve.vllm_engine:VllmEngine"}


class ApiError(Exception):
    """A request the server refuses: HTTP status plus the OpenAI error fields."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def queue_full() -> ApiError:
    return ApiError(503, "the server is busy: too many requests are waiting for the model; retry later",
                    "server_overloaded", code="queue_full")


class _Outbox:
    """What the engine thread hands to one event loop's jobs, delivered with one wake-up per batch step: a wake-up
    writes to the loop's self-pipe (and hands it the GIL), and one per token of every running request cost more
    than the step itself."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.items, self.lock, self.scheduled = loop, [], threading.Lock(), False

    def put(self, queue: asyncio.Queue, item: Any, now: bool = True) -> None:
        with self.lock:
            self.items.append((queue, item))
        if now:
            self.send()

    def send(self) -> None:
        with self.lock:
            if self.scheduled or not self.items:
                return
            self.scheduled = True
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            items, self.items, self.scheduled = self.items, [], False
        for queue, item in items:
            queue.put_nowait(item)


_OUTBOXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> its _Outbox
_OUTBOXES_LOCK = threading.Lock()


def _send_all() -> None:
    """Wake every event loop that has items waiting (the end of a batch step)."""
    with _OUTBOXES_LOCK:
        boxes = list(_OUTBOXES.values())
    for box in boxes:
        try:
            box.send()
        except RuntimeError:  # that event loop is gone: the server is shutting down
            pass


@dataclass
class Job:
    """One generation request; its text pieces reach the asyncio side through an asyncio.Queue."""

    prompt: str
    max_new_tokens: int
    stops: tuple = ()
    gen_kwargs: dict = field(default_factory=dict)
    seed: int | None = None
    strip: bool = True
    logprobs: int | None = None  # None: none; N: each token's log-probability and the N most likely
    cancel: threading.Event = field(default_factory=threading.Event)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    error: BaseException | None = None
    cleared: bool = False  # the page's Clear stopped it: its chat ends empty
    client_left: bool = False  # its HTTP client disconnected before the end
    entries: list = field(default_factory=list)  # (token id, logprob, top pairs) of the pieces received so far

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        with _OUTBOXES_LOCK:
            self._outbox = _OUTBOXES.setdefault(loop, _Outbox(loop))
        self._queue: asyncio.Queue = asyncio.Queue()

    def _put(self, item: Any, now: bool = True) -> None:
        """Called from the engine thread; now=False leaves the wake-up to the end of the batch step (_send_all)."""
        try:
            self._outbox.put(self._queue, item, now)
        except RuntimeError:  # the event loop is gone: the server is shutting down
            self.cancel.set()

    async def pieces(self, disconnected: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[str]:
        """The text pieces; leaving early (or the client leaving) cancels this job and no other.

        `disconnected` is asked every DISCONNECT_CHECK_S whether tokens arrive or not: a client that
        left must free the model within a second, not when its reply is complete. (A streaming response
        needs none: the server cancels it when its client goes.) Pieces that arrived while the reader
        was busy come joined as one.
        """
        checked = time.monotonic()
        try:
            while True:
                if disconnected is None:
                    item = await self._queue.get()
                else:
                    try:
                        item = await asyncio.wait_for(self._queue.get(), timeout=DISCONNECT_CHECK_S)
                    except asyncio.TimeoutError:
                        item = None
                    if time.monotonic() - checked >= DISCONNECT_CHECK_S:
                        checked = time.monotonic()
                        if await disconnected():
                            self.client_left = True
                            return
                if item is None:
                    continue
                text = ""
                while item is not _DONE:
                    piece, entries = item
                    text += piece
                    self.entries.extend(entries)
                    if self._queue.empty():
                        item = None
                        break
                    item = self._queue.get_nowait()
                if text:
                    yield text
                if item is _DONE:
                    if self.error is not None:
                        raise ApiError(500, f"generation failed: {self.error}", "server_error")
                    return
        finally:
            self.cancel.set()

    async def text(self, disconnected=None) -> str:
        return "".join([piece async for piece in self.pieces(disconnected)])


class Engine:
    """The one Hugging Face model behind one worker thread: a continuous batch fed from a bounded queue."""

    def __init__(self, loaded, max_queue: int = 8, max_batch_size: int = 16) -> None:
        self.loaded, self.max_queue, self.max_batch_size = loaded, max_queue, max_batch_size
        self.counts = {"finished": 0, "cancelled": 0, "failed": 0}  # shown by /health
        self.largest_batch = 0  # the most requests one step has run together (/health)
        self.running = 0
        self._waiting: collections.deque = collections.deque()
        self._wake = threading.Condition()
        self._closed = False
        self.batchable: bool | None = None  # whether this model's cache can be batched; known after a prefill
        self.thread = threading.Thread(target=self._work, daemon=True, name="unitune-engine")
        self.thread.start()

    @property
    def context_window(self) -> int | None:
        from unitune.chat import context_window

        return context_window(self.loaded.model)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, job: Job) -> Job:
        job._bind()
        with self._wake:
            if self.running + len(self._waiting) >= self.max_batch_size + self.max_queue:
                raise queue_full()
            self._waiting.append(job)
            self._wake.notify()
        return job

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()

    # ---------------------------------------------------------------- the worker thread
    def _alone(self, job: Job) -> bool:
        """Whether this job runs by itself: beam and contrastive search keep several candidates per sequence,
        which the batch's one-token-per-row steps cannot; so does every job of a model whose cache cannot be
        merged (see batching.batchable_cache). Such a job waits for the running batch to finish, then runs."""
        from unitune.generation import needs_own_loop

        return self.batchable is False or needs_own_loop(job.gen_kwargs)

    def _take(self, batch) -> list[Job] | None:
        """Jobs to start now (blocking while nothing runs); None once closed."""
        with self._wake:
            while not self._waiting and not batch.rows and not self._closed:
                self._wake.wait()
            if self._closed:
                return None
            taken: list[Job] = []
            while self._waiting and len(batch) + len(taken) < self.max_batch_size:
                alone = self._alone(self._waiting[0])
                if alone and (batch.rows or taken):
                    break  # it starts once the batch has drained; the jobs behind it wait with it
                taken.append(self._waiting.popleft())
                if alone:
                    break
            self.running = len(batch) + len(taken)
            return taken

    def _work(self) -> None:
        import torch

        from unitune.serve.batching import Batch

        batch = Batch(self.loaded.model)
        with torch.inference_mode():
            while True:
                jobs = self._take(batch)
                if jobs is None:
                    for row in batch.rows:
                        row.job.cancel.set()
                        self._end(row.job, "cancelled")
                    return
                for job in jobs:
                    self._start(job, batch)
                if batch.rows:
                    self.largest_batch = max(self.largest_batch, len(batch))
                    try:
                        finished = batch.step()
                    except Exception as err:  # the forward itself failed: every running request learns why
                        log.exception("a batch step failed")
                        for row in batch.rows:
                            row.job.error, row.finish_reason = err, "error"
                        finished = batch.drop_finished()
                    for row in finished:
                        self._finish(row)
                _send_all()
                with self._wake:
                    self.running = len(batch)

    def _start(self, job: Job, batch) -> None:
        """Prefill a job and add it to the batch (or run it alone, see _alone)."""
        from unitune.generation import NextToken
        from unitune.serve.batching import Row, batchable_cache
        from unitune.streaming import TextPieces, prompt_ids

        if job.cancel.is_set():  # its client left while it waited
            self._end(job, "cancelled")
            return
        if self._alone(job):
            self._run_alone(job)
            return
        model, tok = self.loaded.model, self.loaded.tokenizer
        try:
            ids = prompt_ids(tok, job.prompt)
            chooser = NextToken(model, job.gen_kwargs, ids, tok.pad_token_id, tok.eos_token_id, job.seed,
                                job.logprobs)
            scores, cache = batch.prefill(ids)
            if not batchable_cache(cache):
                log.info("%s keeps a cache that cannot be batched: requests run one at a time",
                         type(model).__name__)
                self.batchable = False
                self._run_alone(job)
                return
            self.batchable = True
            row = Row(job, chooser, TextPieces(tok, job.stops, job.strip), len(ids))
            row.take(chooser.choose(scores))
        except Exception as err:  # reported to that client; the others go on
            log.exception("generation failed")
            job.error = err
            self._end(job, "error")
            return
        if row.finish_reason is not None:  # done at its first token
            self._finish(row)
        else:
            batch.join(row, cache)

    def _finish(self, row) -> None:
        job = row.job
        if row.finish_reason != "error":
            job._put((row.text.rest(), row.chooser.take_logprobs()))  # text held back until the end
        job.prompt_tokens, job.completion_tokens = row.prompt_tokens, len(row.text.ids)
        self._end(job, row.finish_reason)

    def _end(self, job: Job, reason: str) -> None:
        job.finish_reason = "length" if reason == "length" else "stop"
        kind = "failed" if job.error else "cancelled" if reason == "cancelled" else "finished"
        self.counts[kind] += 1
        job._put(_DONE)

    def _run_alone(self, job: Job) -> None:
        """generate() for this one job, streamed (unitune.streaming.TextStream)."""
        import torch

        from unitune.generation import stream_generate

        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        reason = "stop"
        try:
            if job.seed is not None:
                torch.manual_seed(job.seed)
            stream = stream_generate(model, tokenizer, job.prompt, job.max_new_tokens, job.stops, cancel=job.cancel,
                                     strip=job.strip, logprobs=job.logprobs, **job.gen_kwargs)
            for piece in stream:
                job._put((piece, stream.take_logprobs()))
            job._put(("", stream.take_logprobs()))  # tokens after the last piece (a stop string)
            job.prompt_tokens, job.completion_tokens = stream.prompt_tokens, stream.completion_tokens
            reason = stream.finish_reason or "stop"
        except Exception as err:  # reported to that client; the engine serves the next job
            log.exception("generation failed")
            job.error, reason = err, "error"
        self._end(job, reason)


def backend_class(name: str):
    """The engine class of an --infer_backend name."""
    import importlib

    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
