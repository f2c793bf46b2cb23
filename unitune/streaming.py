"""One generation streamed as text pieces (server.py, web.py): stop strings, whitespace, cancellation, logprobs."""

from __future__ import annotations

from typing import Any, Iterable

from unitune.generation import DECODING_PRESETS, cut_at_stop, generate_ids, whole_text

# a logprob of -inf (a token top-p / top-k ruled out) is not valid JSON: report it as this (vLLM's choice)
MIN_LOGPROB = -9999.0


def _held_back(text: str, stops: Iterable[str], strip: bool = True) -> int:
    """How many trailing characters of `text` may still become a stop string or trailing whitespace (also the
    whitespace before a partial stop string: cut there, it ends the answer and is stripped)."""
    def space_before(end: int) -> int:
        return end - len(text[:end].rstrip()) if strip else 0

    hold = space_before(len(text))
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k + space_before(len(text) - k))
                break
    return hold


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The token ids a prompt is generated from; "" (or a tokenizer that adds nothing to it) starts a document."""
    ids = tokenizer(prompt)["input_ids"]
    if ids:
        return ids
    if tokenizer.bos_token_id is None:
        from unitune.errors import UnituneError

        raise UnituneError("the prompt is empty and this tokenizer has no BOS token to start from")
    return [tokenizer.bos_token_id]


class TextPieces:
    """Token ids in, text pieces out, for one answer: what TextStream and the serving engine's batch rows share.

    add(ids) returns the text that can be shown now ("" while it may still become a stop string or trailing
    whitespace, or ends in half of a multi-byte character) and sets `stopped` once a stop string appeared;
    rest() is the remainder at the end. All pieces joined equal generate_batch's text for the same ids.
    """

    def __init__(self, tokenizer, stops: Iterable[str] = (), strip: bool = True) -> None:
        self.tokenizer, self.stops, self.strip = tokenizer, tuple(s for s in stops if s), strip
        self.ids: list[int] = []
        self.sent = 0  # characters of the answer already handed out
        self.stopped = False

    def add(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        raw = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if raw.endswith("\ufffd"):  # half of a multi-byte character
            return ""
        if cut_at_stop(raw, self.stops) != raw:
            self.stopped = True
            return ""
        clean = raw.lstrip() if self.strip else raw
        end = len(clean) - _held_back(clean, self.stops, self.strip)
        if end <= self.sent:
            return ""
        piece, self.sent = clean[self.sent:end], end
        return piece

    def rest(self) -> str:
        final = cut_at_stop(whole_text(self.tokenizer, self.ids), self.stops)
        final = final.strip() if self.strip else final
        piece = final[self.sent:] if len(final) > self.sent else ""
        self.sent = max(self.sent, len(final))
        return piece


class TextStream:
    """One generation whose text arrives piece by piece: `for piece in TextStream(...)` (iterate once).

    generate() runs in a thread and hands token ids over a queue; the pieces joined equal what
    generate_batch returns for the same prompt (cut at the first stop string, stripped), because text
    that may still turn into a stop string or trailing whitespace is held back until it cannot, and so
    is half of a multi-byte character (strip=False keeps the whitespace: raw completions continue the
    prompt's text as it is). cancel() from any thread, or leaving the loop early (break,
    KeyboardInterrupt, a closed client), stops generate() at its next token. Afterwards:
    prompt_tokens, completion_tokens and finish_reason ("stop", "length" or "cancelled").

    logprobs=N (0 to 20) records, for every generated token, (token id, its log-probability, the N most
    likely (id, log-probability) pairs) under the distribution it was chosen from (after penalties,
    temperature, top-k / top-p); take_logprobs() hands over those recorded since its last call.
    An empty prompt starts from the tokenizer's BOS token.
    """

    def __init__(self, model, tokenizer, prompt: str, max_new_tokens: int = 256, stops: Iterable[str] = (),
                 cancel=None, strip: bool = True, logprobs: int | None = None, **gen_kwargs: Any) -> None:
        import threading

        self.model, self.tokenizer, self.prompt, self.strip = model, tokenizer, prompt, strip
        self.max_new_tokens, self.stops = max_new_tokens, tuple(s for s in stops if s)
        self.gen_kwargs = {**DECODING_PRESETS["greedy"], **gen_kwargs}
        self.logprobs = logprobs
        self._entries: list[tuple] = []  # filled by the generate() thread, drained by take_logprobs()
        self.cancelled = cancel if cancel is not None else threading.Event()
        self._halt = threading.Event()  # a stop string was seen or the reader left
        self.prompt_tokens = self.completion_tokens = 0
        self.finish_reason: str | None = None

    def cancel(self) -> None:
        self.cancelled.set()

    def take_logprobs(self) -> list[tuple]:
        n = len(self._entries)  # the generate() thread may append meanwhile: take only what is there now
        taken = self._entries[:n]
        del self._entries[:n]
        return taken

    def _run(self, enc, out) -> None:
        import torch
        from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        halt, cancelled, top, entries = self._halt, self.cancelled, self.logprobs, self._entries
        scored: list = []  # the distribution of the step whose token the streamer gets next

        class Record(LogitsProcessor):  # last in generate()'s list: it sees the scores the token is chosen from
            def __call__(self, input_ids, scores):
                scored[:] = [scores[0].float().log_softmax(-1)]
                return scores

        class Feed(BaseStreamer):
            prompt_seen = False

            def put(self, value):
                if self.prompt_seen:
                    tokens = value.reshape(-1).tolist()
                    if top is not None and scored:
                        row = scored.pop().clamp(min=MIN_LOGPROB)
                        best = row.topk(top) if top else None
                        entries.append((tokens[0], float(row[tokens[0]]),
                                        list(zip(best.indices.tolist(), best.values.tolist())) if top else []))
                    out.put(tokens)
                self.prompt_seen = True  # generate() first pushes the prompt itself

            def end(self):
                pass

        class Halt(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                flag = halt.is_set() or cancelled.is_set()
                return torch.full((input_ids.shape[0],), flag, dtype=torch.bool, device=input_ids.device)

        # beam search cannot stream: its best beam is only known at the end
        beams = self.gen_kwargs.get("num_beams", 1) > 1
        extra = {"logits_processor": LogitsProcessorList([Record()])} if top is not None and not beams else {}
        try:
            # through generate_ids, so contrastive search and the checkpoint's own eos list work here too
            seq = generate_ids(self.model, dict(enc), self.max_new_tokens, self.tokenizer.pad_token_id,
                               self.tokenizer.eos_token_id, streamer=None if beams else Feed(),
                               stopping_criteria=StoppingCriteriaList([Halt()]), **extra, **self.gen_kwargs)
            if beams:
                out.put(seq[0, enc["input_ids"].shape[1]:].tolist())
        except BaseException as err:  # handed to the reader, who raises it
            out.put(err)
        finally:
            out.put(None)

    def _encode(self):
        import torch

        ids = torch.tensor([prompt_ids(self.tokenizer, self.prompt)], device=next(self.model.parameters()).device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def __iter__(self):
        import queue
        import threading

        enc = self._encode()
        self.prompt_tokens = int(enc["input_ids"].shape[1])
        out: queue.Queue = queue.Queue()
        worker = threading.Thread(target=self._run, args=(enc, out), daemon=True, name="unitune-generate")
        worker.start()
        text = TextPieces(self.tokenizer, self.stops, self.strip)
        try:
            while True:
                try:
                    item = out.get(timeout=0.1)  # a timeout keeps Ctrl-C responsive
                except queue.Empty:
                    continue
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                piece = text.add(item)
                self.completion_tokens = len(text.ids)
                if text.stopped:
                    self._halt.set()
                    self.finish_reason = "stop"
                    break
                if piece:
                    yield piece
            rest = text.rest()
            if rest:
                yield rest
            if self.finish_reason is None:
                ids = text.ids
                if self.cancelled.is_set():
                    self.finish_reason = "cancelled"
                elif len(ids) >= self.max_new_tokens and ids[-1] != self.tokenizer.eos_token_id:
                    self.finish_reason = "length"
                else:
                    self.finish_reason = "stop"
        finally:
            if self.finish_reason is None:  # the reader left early
                self.finish_reason = "cancelled"
            self._halt.set()
            worker.join()
