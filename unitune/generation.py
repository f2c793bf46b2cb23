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


def generate_batch(model, tokenizer, prompts: list[str], max_new_tokens: int = 128,
                   batch_size: int = 16, stops: Iterable[str] = (), on_batch: Callable[[list[int], list[str],
                   int], None] | None = None, **gen_kwargs: Any) -> list[str]:
    """Complete every prompt; left-padded batches of similar length, results in the input order.

    on_batch(indices, texts, new_tokens) is called after each batch (progress, incremental writing).
    """
    import torch

    tokenizer.padding_side = "left"
    config = {**DECODING_PRESETS["greedy"], **gen_kwargs}
    lengths = [len(tokenizer.encode(p, add_special_tokens=True)) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **config)
        new = out[:, enc["input_ids"].shape[1]:]
        texts = [cut_at_stop(t, stops).strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
        for i, text in zip(idx, texts):
            outputs[i] = text
        if on_batch is not None:
            on_batch(idx, texts, int((new != tokenizer.pad_token_id).sum()))
    return outputs
