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
    return settle(config)


def settle(config: dict[str, Any]) -> dict[str, Any]:
    """generate() kwargs as they decode: a temperature of (about) 0 means greedy, as in the OpenAI API (dividing
    logits by ~0 would overflow them), and sampling knobs are dropped when nothing is sampled."""
    from unitune.limits import GREEDY_TEMPERATURE

    config = dict(config)
    temperature = config.get("temperature")
    if temperature is not None and temperature < GREEDY_TEMPERATURE:
        config["do_sample"] = False
    if not config.get("do_sample"):  # they would only draw warnings from generate()
        for key in ("temperature", "top_p"):
            config.pop(key, None)
        if not config.get("penalty_alpha"):
            config.pop("top_k", None)
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
                       logits_processor: Any = None, **_ignored: Any):
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
    processors.extend(logits_processor or [])  # e.g. TextStream's log-probability recorder
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


def needs_own_loop(config: dict[str, Any]) -> bool:
    """Whether these generate() kwargs need a decoding loop of their own (beam or contrastive search keep several
    candidates per sequence), so a serving batch that takes one token per sequence per step cannot run them."""
    return (config.get("num_beams") or 1) > 1 or is_contrastive(config)


class NextToken:
    """One sequence's decoding rule outside generate(): the logits processors, eos ids and greedy or sampled choice
    that model.generate would use for these kwargs (the checkpoint's generation_config filling what they leave
    out), applied to that sequence's row of a batch's logits (unitune.serve.batching).

    Sampling draws from a torch.Generator of its own, seeded with `seed`: a seeded request samples the same
    tokens alone or in any batch (and the same as generate() after torch.manual_seed(seed)).
    logprobs=N records (token, its log-probability, the N most likely pairs) under the distribution chosen from.
    """

    def __init__(self, model, gen_kwargs: dict[str, Any], prompt_ids: list[int], pad_token_id: int,
                 eos_token_id: int | None, seed: int | None = None, logprobs: int | None = None) -> None:
        import torch
        from transformers import MinNewTokensLengthLogitsProcessor

        config = check_decoding({**DECODING_PRESETS["greedy"], **gen_kwargs})
        own_eos = getattr(model.generation_config, "eos_token_id", None)
        config.setdefault("eos_token_id", own_eos if own_eos is not None else eos_token_id)
        device = model.device
        # generate()'s own steps (private in transformers 5.24, so a change there shows in tests/test_serve.py):
        # kwargs over the checkpoint's generation_config over the global defaults, then the processors
        merged, _ = model._prepare_generation_config(None, pad_token_id=pad_token_id, **config)
        model._prepare_special_tokens(merged, True, device=device)
        processors = model._get_logits_processor(merged, input_ids_seq_length=len(prompt_ids), device=device)
        eos = merged._eos_token_tensor
        self.eos = set() if eos is None else set(eos.reshape(-1).tolist())
        self._eos_ids = sorted(self.eos)
        # min_new_tokens (ignore_eos) only sets the eos scores to -inf until then: done here, in place, so a greedy
        # row needs no processor and takes the batch's argmax (the same scores: -inf stays -inf through the rest)
        self.min_new = max([q.min_new_tokens for q in processors if isinstance(q, MinNewTokensLengthLogitsProcessor)],
                           default=0)
        self.processors = [q for q in processors if not isinstance(q, MinNewTokensLengthLogitsProcessor)]
        self.sample, self.logprobs = bool(merged.do_sample), logprobs
        self.chosen = 0  # tokens chosen so far
        self.ids = torch.tensor([prompt_ids], device=device) if self.processors else None
        self.generator = None
        if self.sample:
            self.generator = torch.Generator(device=device)
            if seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(seed)
        self.entries: list[tuple] = []  # logprob records not yet handed over

    @property
    def plain(self) -> bool:
        """Greedy with nothing to apply or record: the token is the row's argmax, taken for the whole batch at once."""
        return not self.sample and not self.processors and self.logprobs is None

    def ban_eos(self, scores) -> None:
        """Before min_new_tokens are out, no end of sequence: its scores -inf, in place ((1, vocab) or (vocab,))."""
        if self.chosen < self.min_new and self._eos_ids:
            scores[..., self._eos_ids] = float("-inf")

    def taken(self, token: int) -> int:
        """Count a token chosen for this row outside choose() (a plain row's batch argmax)."""
        self.chosen += 1
        return token

    def choose(self, scores) -> int:
        """The next token from this sequence's (1, vocab) float scores (changed in place)."""
        import torch

        self.ban_eos(scores)
        for processor in self.processors:  # LogitsProcessorList would inspect each one's signature every call
            scores = processor(self.ids, scores)
        if self.sample:
            token = int(torch.multinomial(scores.softmax(-1), 1, generator=self.generator)[0, 0])
        else:
            token = int(scores[0].argmax())
        if self.logprobs is not None:
            from unitune.streaming import MIN_LOGPROB

            row = scores[0].log_softmax(-1).clamp(min=MIN_LOGPROB)
            best = row.topk(self.logprobs) if self.logprobs else None
            self.entries.append((token, float(row[token]),
                                 list(zip(best.indices.tolist(), best.values.tolist())) if best is not None else []))
        if self.ids is not None:
            self.ids = torch.cat([self.ids, self.ids.new_tensor([[token]])], dim=1)
        return self.taken(token)

    def take_logprobs(self) -> list[tuple]:
        taken, self.entries = self.entries, []
        return taken


def whole_text(tokenizer, ids: list[int]) -> str:
    """The text of `ids` without a half character at the end: a reply cut (by max_new_tokens) in the middle of a
    multi-byte character would decode to U+FFFD, a character the model never wrote."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    for drop in range(1, min(4, len(ids)) + 1):  # a UTF-8 character has at most 4 bytes, so 4 tokens
        if not text.endswith("\ufffd"):
            break
        text = tokenizer.decode(ids[:-drop], skip_special_tokens=True)
    return text.rstrip("\ufffd")


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
        rows = [row.tolist() for row in new]
        for row in rows:  # finished rows are padded: the padding is not where a character was cut
            while row and row[-1] == tokenizer.pad_token_id:
                row.pop()
        texts = [cut_at_stop(whole_text(tokenizer, row), stops).strip() for row in rows]
        for i, text in zip(idx, texts):
            outputs[i] = text
        if on_batch is not None:
            on_batch(idx, texts, int((new != tokenizer.pad_token_id).sum()))
    return outputs


def stream_generate(model, tokenizer, prompt: str, max_new_tokens: int = 256, stops: Iterable[str] = (),
                    cancel=None, strip: bool = True, **gen_kwargs: Any):
    """Text pieces of the answer to `prompt` as they are generated; see unitune.streaming.TextStream."""
    from unitune.streaming import TextStream

    return TextStream(model, tokenizer, prompt, max_new_tokens, stops, cancel, strip, **gen_kwargs)
