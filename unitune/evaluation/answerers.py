"""The model under test: a local model through the shared loader, or an OpenAI-compatible endpoint.

Both answer a list of questions (`generate`: the question is the user's instruction, prompted through the
model's template like every front-end); the local one also scores the next-token logits of the option
letters (`choose`, batched, on the raw prompt as the published harnesses do for base models).
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
                # the name and what it renders: an edited template file or chat template is a changed setting
                "template": template.name, "template_renders": template.prompt_for("{instruction}", "{input}"),
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


def choose_by_logits(model, tokenizer, prompts: list[str], letters: str = "ABCD", batch_size: int = 8) -> list[str]:
    """For each prompt, the letter whose next-token logit is highest; left-padded batches of similar length."""
    import torch

    ids = letter_ids(tokenizer, letters)
    tokenizer.padding_side = "left"
    encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    device = next(model.parameters()).device
    params = inspect.signature(model.forward).parameters
    accepts = set(params)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):  # a PeftModel passes them on
        accepts |= {"position_ids", "logits_to_keep"}
    out: list[str] = [""] * len(prompts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, padding=True, return_tensors="pt").to(device)
            mask = enc["attention_mask"]
            extra: dict[str, Any] = {}
            if "position_ids" in accepts:  # left padding must not shift the real tokens' positions
                extra["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
            if "logits_to_keep" in accepts:
                extra["logits_to_keep"] = 1
            logits = model(input_ids=enc["input_ids"], attention_mask=mask, use_cache=False,
                           **extra).logits[:, -1, ids].float()
            for i, best in zip(idx, logits.argmax(-1).tolist()):
                out[i] = letters[best]
    return out


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
