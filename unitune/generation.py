"""Decoding presets and batched generation, shared by the default run, generate.py, chat, web and eval."""

from __future__ import annotations

from typing import Any, Callable, Iterable

DECODING_PRESETS: dict[str, dict[str, Any]] = {
    "greedy": {"do_sample": False, "num_beams": 1},
    # Alpaca-CoT's generate.py defaults
    "alpaca_cot": {"do_sample": True, "top_p": 0.9, "temperature": 1.0, "top_k": 40,
                   "no_repeat_ngram_size": 6, "repetition_penalty": 1.8, "num_beams": 1},
    "beam": {"do_sample": False, "num_beams": 4, "early_stopping": True},
    # Mozi's API offered contrastive search
    "contrastive": {"do_sample": False, "penalty_alpha": 0.6, "top_k": 4},
    "sample": {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 50},
}


def decoding_config(preset: str = "greedy", **overrides: Any) -> dict[str, Any]:
    """A preset's generate() kwargs with the given overrides (None values leave the preset's)."""
    from unitune.errors import UnituneError

    if preset not in DECODING_PRESETS:
        raise UnituneError(f"unknown --decoding {preset!r}; choose one of: {', '.join(DECODING_PRESETS)}")
    config = dict(DECODING_PRESETS[preset])
    config.update({k: v for k, v in overrides.items() if v is not None})
    return config


def cut_at_stop(text: str, stops: Iterable[str]) -> str:
    """Text up to the first stop string (a template's turn marker the model may run on into)."""
    cut = len(text)
    for stop in stops:
        at = text.find(stop)
        if stop and at != -1:
            cut = min(cut, at)
    return text[:cut]


def is_contrastive(config: dict[str, Any]) -> bool:
    """Whether generate() kwargs ask for contrastive search (transformers' own rule)."""
    return (not config.get("do_sample") and (config.get("num_beams") or 1) == 1
            and (config.get("penalty_alpha") or 0) > 0 and (config.get("top_k") or 0) > 1)


def check_decoding(config: dict[str, Any]) -> dict[str, Any]:
    """generate() kwargs made safe for transformers 5 (penalty_alpha outside contrastive search would make it
    reach for the Hub); a user error raises before any model is loaded when front-ends call this early."""
    if config.get("penalty_alpha") and not is_contrastive(config):
        if not config.get("do_sample") and (config.get("num_beams") or 1) == 1:
            from unitune.errors import UnituneError

            raise UnituneError("--penalty_alpha (contrastive search) needs --top_k of 2 or more")
        config = {k: v for k, v in config.items() if k != "penalty_alpha"}  # meaningless for sampling / beams
    return config


def contrastive_search(model, input_ids, attention_mask, max_new_tokens: int, penalty_alpha: float, top_k: int,
                       eos_token_id: int | list[int] | None, pad_token_id: int, repetition_penalty: float | None = None,
                       no_repeat_ngram_size: int | None = None, streamer: Any = None, stopping_criteria: Any = None,
                       **_ignored: Any):
    """Contrastive search (Su et al. 2022), batched over left-padded rows; returns prompt + new token ids.

    transformers 5 moved contrastive search to a Hub `custom_generate` repo that cannot be fetched
    offline, so it lives here: at each step the top_k candidates are scored by
    (1 - alpha) * p(candidate) - alpha * max cosine(candidate hidden state, earlier hidden states),
    all k candidates of every row in one forward pass on a k-fold copy of the KV cache.
    streamer and stopping_criteria follow model.generate's protocol (the streamer gets the prompt first).
    """
    import torch
    from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    processors = LogitsProcessorList()
    if repetition_penalty and repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if no_repeat_ngram_size:
        processors.append(NoRepeatNGramLogitsProcessor(no_repeat_ngram_size))
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or []),
                       device=input_ids.device)
    rows, k = input_ids.shape[0], top_k
    mask = attention_mask.clone()
    # explicit positions: left padding must not shift the real tokens' positions
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True, output_hidden_states=True)
    from unitune.compat import cache_field

    cache_name = cache_field()
    if getattr(out, "hidden_states", None) is None or out.get(cache_name) is None:
        from unitune.errors import UnituneError

        raise UnituneError(f"--decoding contrastive needs a model that returns hidden states and a KV cache; "
                           f"{type(model).__name__} does not: choose another --decoding")
    cache, logits = out[cache_name], out.logits[:, -1].float()
    context = out.hidden_states[-1]  # (rows, length, hidden): what a candidate must not repeat
    ids, done = input_ids, torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    pick = torch.arange(rows, device=input_ids.device) * k
    for _ in range(max_new_tokens):
        probs = processors(ids, logits).softmax(-1)
        top_probs, top_ids = probs.topk(k, dim=-1)  # (rows, k)
        cache.batch_repeat_interleave(k)
        cand_mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1).repeat_interleave(k, dim=0)
        position = mask.sum(-1, keepdim=True).repeat_interleave(k, dim=0)
        step = model(input_ids=top_ids.reshape(-1, 1), attention_mask=cand_mask, position_ids=position,
                     use_cache=True, output_hidden_states=True, **{cache_name: cache})
        hidden = step.hidden_states[-1][:, -1]  # (rows * k, hidden)
        cosine = torch.nn.functional.cosine_similarity(context.repeat_interleave(k, dim=0), hidden[:, None], dim=-1)
        cosine = cosine.masked_fill(mask.repeat_interleave(k, dim=0) == 0, -1.0)  # padding is no context
        score = (1 - penalty_alpha) * top_probs - penalty_alpha * cosine.max(-1).values.view(rows, k)
        chosen = pick + score.argmax(-1)
        cache = step[cache_name]
        cache.batch_select_indices(chosen)
        token = top_ids.view(-1)[chosen]
        token = torch.where(done, torch.full_like(token, pad_token_id), token)
        ids = torch.cat([ids, token[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
        context = torch.cat([context, hidden[chosen][:, None]], dim=1)
        logits = step.logits[chosen, -1].float()
        if streamer is not None:
            streamer.put(token.cpu())
        done |= torch.isin(token, eos)
        if stopping_criteria is not None:
            done |= stopping_criteria(ids, None).to(done.device)
        if bool(done.all()):
            break
    if streamer is not None:
        streamer.end()
    return ids


def generate_ids(model, enc: dict, max_new_tokens: int, pad_token_id: int, eos_token_id: int | None = None,
                 streamer: Any = None, **config: Any):
    """model.generate for every decoding preset (contrastive included): prompt + new ids of a left-padded batch.

    eos_token_id is a fallback: the checkpoint's own eos list (e.g. Llama 3's two end tokens) wins.
    """
    import torch

    config = check_decoding(config)
    own_eos = getattr(model.generation_config, "eos_token_id", None)
    config.setdefault("eos_token_id", own_eos if own_eos is not None else eos_token_id)
    with torch.inference_mode():
        if is_contrastive(config):
            return contrastive_search(model, enc["input_ids"], enc["attention_mask"], max_new_tokens,
                                      pad_token_id=pad_token_id, streamer=streamer, **config)
        return model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id, streamer=streamer,
                              **config)


def generate_batch(model, tokenizer, prompts: list[str], max_new_tokens: int = 128,
                   batch_size: int = 16, stops: Iterable[str] = (), on_batch: Callable[[list[int], list[str],
                   int], None] | None = None, **gen_kwargs: Any) -> list[str]:
    """Complete every prompt; left-padded batches of similar length, results in the input order.

    on_batch(indices, texts, new_tokens) is called after each batch (progress, incremental writing).
    """
    tokenizer.padding_side = "left"
    config = {**DECODING_PRESETS["greedy"], **gen_kwargs}
    encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]  # once; batches pad these
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, padding=True, return_tensors="pt").to(device)
        out = generate_ids(model, dict(enc), max_new_tokens, tokenizer.pad_token_id, tokenizer.eos_token_id, **config)
        new = out[:, enc["input_ids"].shape[1]:]
        texts = [cut_at_stop(t, stops).strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
        for i, text in zip(idx, texts):
            outputs[i] = text
        if on_batch is not None:
            on_batch(idx, texts, int((new != tokenizer.pad_token_id).sum()))
    return outputs


def _held_back(text: str, stops: Iterable[str], strip: bool = True) -> int:
    """How many trailing characters of `text` may still become a stop string (or trailing whitespace)."""
    hold = len(text) - len(text.rstrip()) if strip else 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return hold


class TextStream:
    """One generation whose text arrives piece by piece: `for piece in TextStream(...)` (iterate once).

    generate() runs in a thread and hands token ids over a queue; the pieces joined equal what
    generate_batch returns for the same prompt (cut at the first stop string, stripped), because text
    that may still turn into a stop string or trailing whitespace is held back until it cannot
    (strip=False keeps the whitespace: raw completions continue the prompt's text as it is).
    cancel() from any thread, or leaving the loop early (break, KeyboardInterrupt, a closed client),
    stops generate() at its next token. Afterwards: prompt_tokens, completion_tokens and
    finish_reason ("stop", "length" or "cancelled").
    """

    def __init__(self, model, tokenizer, prompt: str, max_new_tokens: int = 256, stops: Iterable[str] = (),
                 cancel=None, strip: bool = True, **gen_kwargs: Any) -> None:
        import threading

        self.model, self.tokenizer, self.prompt, self.strip = model, tokenizer, prompt, strip
        self.max_new_tokens, self.stops = max_new_tokens, tuple(s for s in stops if s)
        self.gen_kwargs = {**DECODING_PRESETS["greedy"], **gen_kwargs}
        self.cancelled = cancel if cancel is not None else threading.Event()
        self._halt = threading.Event()  # a stop string was seen or the reader left
        self.prompt_tokens = self.completion_tokens = 0
        self.finish_reason: str | None = None

    def cancel(self) -> None:
        self.cancelled.set()

    def _run(self, enc, out) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        halt, cancelled = self._halt, self.cancelled

        class Feed(BaseStreamer):
            prompt_seen = False

            def put(self, value):
                if self.prompt_seen:
                    out.put(value.reshape(-1).tolist())
                self.prompt_seen = True  # generate() first pushes the prompt itself

            def end(self):
                pass

        class Halt(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                flag = halt.is_set() or cancelled.is_set()
                return torch.full((input_ids.shape[0],), flag, dtype=torch.bool, device=input_ids.device)

        # beam search cannot stream: its best beam is only known at the end
        beams = self.gen_kwargs.get("num_beams", 1) > 1
        try:
            # through generate_ids, so contrastive search and the checkpoint's own eos list work here too
            seq = generate_ids(self.model, dict(enc), self.max_new_tokens, self.tokenizer.pad_token_id,
                               self.tokenizer.eos_token_id, streamer=None if beams else Feed(),
                               stopping_criteria=StoppingCriteriaList([Halt()]), **self.gen_kwargs)
            if beams:
                out.put(seq[0, enc["input_ids"].shape[1]:].tolist())
        except BaseException as err:  # handed to the reader, who raises it
            out.put(err)
        finally:
            out.put(None)

    def __iter__(self):
        import queue
        import threading

        tok = self.tokenizer
        enc = tok(self.prompt, return_tensors="pt").to(next(self.model.parameters()).device)
        self.prompt_tokens = int(enc["input_ids"].shape[1])
        out: queue.Queue = queue.Queue()
        worker = threading.Thread(target=self._run, args=(enc, out), daemon=True, name="unitune-generate")
        worker.start()
        ids: list[int] = []
        sent = 0  # characters of the answer already yielded
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
                ids.extend(item)
                self.completion_tokens = len(ids)
                raw = tok.decode(ids, skip_special_tokens=True)
                if raw.endswith("\ufffd"):  # half of a multi-byte character
                    continue
                if cut_at_stop(raw, self.stops) != raw:
                    self._halt.set()
                    self.finish_reason = "stop"
                    break
                clean = raw.lstrip() if self.strip else raw
                end = len(clean) - _held_back(clean, self.stops, self.strip)
                if end > sent:
                    yield clean[sent:end]
                    sent = end
            final = cut_at_stop(tok.decode(ids, skip_special_tokens=True), self.stops)
            final = final.strip() if self.strip else final
            if len(final) > sent:
                yield final[sent:]
            if self.finish_reason is None:
                if self.cancelled.is_set():
                    self.finish_reason = "cancelled"
                elif len(ids) >= self.max_new_tokens and ids[-1] != tok.eos_token_id:
                    self.finish_reason = "length"
                else:
                    self.finish_reason = "stop"
        finally:
            if self.finish_reason is None:  # the reader left early
                self.finish_reason = "cancelled"
            self._halt.set()
            worker.join()


def stream_generate(model, tokenizer, prompt: str, max_new_tokens: int = 256, stops: Iterable[str] = (),
                    cancel=None, strip: bool = True, **gen_kwargs: Any) -> TextStream:
    """Text pieces of the answer to `prompt` as they are generated; see TextStream."""
    return TextStream(model, tokenizer, prompt, max_new_tokens, stops, cancel, strip, **gen_kwargs)
