"""The model under test: a local model through the shared loader, or an OpenAI-compatible endpoint.

Both answer a list of questions (`generate`: the question is the user's instruction, prompted through the
model's template like every front-end); the local one also scores the next-token logits of the option
letters (`choose`, on the raw prompt as the published harnesses do for base models): batched, and a prefix
the prompts share (a subject's instruction and few-shot examples) runs once, its cache reused.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from typing import Any

from unitune.errors import UnituneError

log = logging.getLogger(__name__)


class LocalAnswerer:
    def __init__(self, model_args, gen_args, batch_size: int = 8, letters: str = "ABCD", loaded=None) -> None:
        from unitune.loader import check_model_args

        self.model_args, self.gen_args, self.batch_size, self.letters = model_args, gen_args, batch_size, letters
        self.spec = check_model_args(model_args)  # a bad flag fails here, before anything loads
        self.gen_kwargs = gen_args.generate_kwargs()
        self._loaded = loaded  # a model already in memory (training's base or tuned model), else loaded on use
        self._template = None

    @property
    def template(self):
        """The template the answers are prompted with: the loaded model's, else resolved from the tokenizer alone
        (`--model_type auto` names none: the tokenizer's chat template or alpaca), without loading the model."""
        if self._loaded is not None:
            return self._loaded.template
        if self._template is None:
            from unitune.chat_templates import resolve
            from unitune.loader import load_tokenizer

            tokenizer = load_tokenizer(self.model_args, self.spec, padding_side="left")
            self._template = resolve(self.model_args.template, self.spec.template, tokenizer)
        return self._template

    def identity(self) -> dict:
        from unitune.evaluation.predict import fingerprint_dir

        template = self.template
        return {"kind": "local", "model_type": self.spec.name, "model": fingerprint_dir(self.model_args.base_path),
                "adapter": fingerprint_dir(self.model_args.adapter),
                # the name and its digest: an edited template file or chat template is a changed setting
                "template": template.name, "template_digest": template.digest(),
                "quantization_bit": self.model_args.quantization_bit, "dtype": self.model_args.compute_dtype,
                "decoding": self.gen_kwargs, "max_new_tokens": self.gen_args.max_new_tokens}

    @property
    def loaded(self):
        if self._loaded is None:
            from unitune.loader import load

            self._loaded = load(self.model_args, mode="infer")
        return self._loaded

    def prompts(self, questions: list[dict]) -> list[str]:
        template = self.template
        return [template.prompt_for(q["prompt"], q.get("input", "")) for q in questions]

    def generate(self, questions: list[dict]) -> list[str]:
        from unitune.generation import generate_batch

        lo = self.loaded
        return generate_batch(lo.model, lo.tokenizer, self.prompts(questions), self.gen_args.max_new_tokens,
                              self.batch_size, stops=lo.template.stop, **self.gen_kwargs)

    def choose(self, questions: list[dict], batch_size: int | None = None) -> list[str]:
        return choose_by_logits(self.loaded.model, self.loaded.tokenizer, [q["prompt"] for q in questions],
                                self.letters, batch_size or self.batch_size)


def letter_ids(tokenizer, letters: str) -> list[int]:
    """The token id of each option letter as it follows a prompt (CMMLU's `tokenizer(letter).input_ids[-1]`)."""
    ids = [tokenizer(letter, add_special_tokens=False)["input_ids"][-1] for letter in letters]
    if len(set(ids)) != len(ids):
        raise UnituneError("the tokenizer gives two option letters the same token; use --method generate")
    return ids


MIN_SHARED = 16  # tokens: a shorter common prefix saves less than its cache copies cost


def prefix_groups(encoded: list[list[int]]) -> list[tuple[int, list[int]]]:
    """(shared prefix length, member indices): prompts sorted by their tokens, neighbours grouped while they
    share at least MIN_SHARED tokens and half the group's prefix (a 5-shot subject: instruction + examples).
    Every member keeps at least one token of its own after the prefix."""
    import os.path

    groups: list[tuple[int, list[int]]] = []
    for i in sorted(range(len(encoded)), key=lambda i: encoded[i]):
        ids = encoded[i]
        if groups:
            shared, members = groups[-1]
            common = min(len(os.path.commonprefix([encoded[members[0]][:shared], ids])), len(ids) - 1)
            if common >= MIN_SHARED and 2 * common >= shared:
                groups[-1] = (common, members + [i])
                continue
        groups.append((len(ids) - 1, [i]))
    return groups


def _forward_kwargs(model) -> tuple[set, str | None, bool]:
    """What the forward accepts, the name of its cache argument, and whether a prefix cache may be shared:
    transformers' own model code (a remote model's cache handling varies), no sliding-window attention, not a
    prompt-learning adapter (which fills the cache itself)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel passes them on
    params = inspect.signature(base.forward).parameters
    accepts = set(params)
    cache_arg = "cache" if "cache" in accepts else ("past_key_values" if "past_key_values" in accepts else None)
    prompt_learning = getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False)
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    sliding = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    shareable = (cache_arg is not None and type(base).__module__.startswith("transformers.") and not prompt_learning
                 and not sliding)  # a sliding-window cache drops the prefix it would share
    return accepts, cache_arg, shareable


def letter_logits(model, tokenizer, prompts: list[str], letters: str = "ABCD", batch_size: int = 8,
                  share_prefix: bool = True):
    """The next-token logits of each option letter after each prompt, a (len(prompts), len(letters)) tensor.

    Prompts that share a long prefix (a subject's instruction and few-shot examples) run it once: its key /
    value cache is repeated for a batch of the rest of each prompt. The others run whole, left-padded, in
    batches of similar length. Only the last position goes through the output layer (logits_to_keep)."""
    import torch

    ids = letter_ids(tokenizer, letters)
    encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    device = next(model.parameters()).device
    accepts, cache_arg, shareable = _forward_kwargs(model)
    out = torch.empty(len(prompts), len(letters))
    groups = prefix_groups(encoded) if share_prefix and shareable else [(0, [i]) for i in range(len(prompts))]
    whole = [members[0] for _, members in groups if len(members) == 1]
    with torch.inference_mode():
        whole.sort(key=lambda i: -len(encoded[i]))
        for start in range(0, len(whole), batch_size):
            idx = whole[start:start + batch_size]
            out[idx] = _whole_batch(model, tokenizer, [encoded[i] for i in idx], accepts, device)[:, ids]
        for shared, members in groups:
            if len(members) > 1:
                rest = sorted(members, key=lambda i: -len(encoded[i]))
                cache = _prefix_cache(model, encoded[rest[0]][:shared], cache_arg, accepts, device)
                cache.batch_repeat_interleave(min(batch_size, len(rest)))  # one copy per row, kept for the group
                for start in range(0, len(rest), batch_size):
                    idx = rest[start:start + batch_size]
                    out[idx] = _suffix_batch(model, tokenizer, cache, shared, [encoded[i][shared:] for i in idx],
                                             cache_arg, accepts, device)[:, ids]
    return out


def _whole_batch(model, tokenizer, batch: list[list[int]], accepts: set, device):
    tokenizer.padding_side = "left"
    enc = tokenizer.pad({"input_ids": batch}, padding=True, return_tensors="pt").to(device)
    mask = enc["attention_mask"]
    extra: dict[str, Any] = {}
    if "position_ids" in accepts:  # left padding must not shift the real tokens' positions
        extra["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    if "logits_to_keep" in accepts:
        extra["logits_to_keep"] = 1
    return model(input_ids=enc["input_ids"], attention_mask=mask, use_cache=False, **extra).logits[:, -1].float().cpu()


def _prefix_cache(model, prefix: list[int], cache_arg: str, accepts: set, device):
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}
    model(input_ids=torch.tensor([prefix], device=device), use_cache=True, **{cache_arg: cache}, **extra)
    return cache


def _suffix_batch(model, tokenizer, cache, shared: int, batch: list[list[int]], cache_arg: str, accepts: set,
                  device):
    """The rest of each prompt after the shared prefix, right-padded (a causal model's real tokens never see
    the padding after them), at positions shared, shared + 1, ...; logits at each one's last real token.
    `cache` holds the prefix once per row; the forward appends to it and the rests are cropped off again."""
    import torch

    width, pad = max(len(b) for b in batch), tokenizer.pad_token_id
    if cache.layers[0].keys.shape[0] > len(batch):  # the group's last, smaller batch
        cache.batch_select_indices(torch.arange(len(batch), device=device))
    input_ids = torch.tensor([b + [pad] * (width - len(b)) for b in batch], device=device)
    mask = torch.tensor([[1] * (shared + len(b)) + [0] * (width - len(b)) for b in batch], device=device)
    positions = torch.arange(shared, shared + width, device=device).expand(len(batch), -1)
    last = torch.tensor([[len(b) - 1] for b in batch], device=device)
    extra = {"logits_to_keep": last} if "logits_to_keep" in accepts else {}
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                   **{cache_arg: cache}, **extra).logits
    cache.crop(-width)  # back to the prefix (a view: the next forward's append is the only copy)
    logits = logits[:, 0] if extra else logits[torch.arange(len(batch)), last[:, 0]]
    return logits.float().cpu()


def choose_by_logits(model, tokenizer, prompts: list[str], letters: str = "ABCD", batch_size: int = 8,
                     share_prefix: bool = True) -> list[str]:
    """For each prompt, the letter whose next-token logit is highest."""
    logits = letter_logits(model, tokenizer, prompts, letters, batch_size, share_prefix)
    return [letters[best] for best in logits.argmax(-1).tolist()]


class EndpointAnswerer:
    """Any OpenAI-compatible chat endpoint (vLLM, our web.py, ...); greedy decoding is sent as temperature 0."""

    def __init__(self, base_url: str, model: str | None, api_key: str | None, gen_args, batch_size: int = 8,
                 timeout: float = 300.0) -> None:
        if not model:
            raise UnituneError("--model_base_url needs --model_name (the model id the endpoint serves)")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.gen_args = model, api_key or "none", gen_args
        self.batch_size, self.timeout = batch_size, timeout
        kwargs = gen_args.generate_kwargs()
        self.sampling: dict[str, Any] = {"temperature": 0.0}
        if kwargs.get("do_sample"):
            self.sampling = {k: kwargs[k] for k in ("temperature", "top_p") if kwargs.get(k) is not None}
        if kwargs.get("num_beams", 1) > 1 or kwargs.get("penalty_alpha"):
            raise UnituneError(f"--decoding {gen_args.decoding}: an endpoint is asked for greedy or sampled text "
                               f"only; beam and contrastive search need a local model")

    def identity(self) -> dict:
        return {"kind": "endpoint", "url": self.url, "model": self.model, "sampling": self.sampling,
                "max_new_tokens": self.gen_args.max_new_tokens, "decoding": dataclasses.asdict(self.gen_args)}

    def _one(self, client, text: str) -> str:
        import httpx

        body = {"model": self.model, "messages": [{"role": "user", "content": text}],
                "max_tokens": self.gen_args.max_new_tokens, **self.sampling}
        delay = 1.0
        for attempt in range(6):
            try:
                response = client.post(self.url, json=body)
            except httpx.TransportError as err:
                problem = str(err)
            else:
                if response.status_code == 200:
                    return str(response.json()["choices"][0]["message"]["content"] or "").strip()
                if response.status_code in (401, 403):
                    raise UnituneError(f"--model_base_url {self.url}: HTTP {response.status_code}; check "
                                       f"--model_api_key")
                if response.status_code not in (429, 500, 502, 503, 504):
                    raise UnituneError(f"--model_base_url {self.url}: HTTP {response.status_code}: "
                                       f"{response.text[:200]}")
                problem = f"HTTP {response.status_code}"
            log.warning("model endpoint: %s; retrying in %.0f s", problem, delay)
            time.sleep(delay)
            delay = min(2 * delay, 30.0)
        raise UnituneError(f"--model_base_url {self.url}: {problem} after 6 tries")

    def generate(self, questions: list[dict]) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        import httpx

        texts = [q["prompt"] + (f"\n{q['input']}" if q.get("input") else "") for q in questions]
        with (httpx.Client(timeout=self.timeout, headers={"Authorization": f"Bearer {self.api_key}"}) as client,
              ThreadPoolExecutor(max_workers=self.batch_size) as pool):
            return list(pool.map(lambda t: self._one(client, t), texts))

    def choose(self, questions: list[dict]) -> list[str]:
        raise UnituneError("--method logits needs a local model (an endpoint returns text): use --method generate")
