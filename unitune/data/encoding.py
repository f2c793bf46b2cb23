"""THE encoding: a normalized record -> token ids and labels, shared by training and inference.

`encode_batch` is the implementation; `encode` is its one-record form. A batch tokenizes all its texts in one
tokenizer call (the Rust tokenizer's batch path), which gives the ids the one-by-one calls give, faster.
"""

from __future__ import annotations

import hashlib


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else f"{tokenizer.name_or_path}:{len(tokenizer)}"
    return hashlib.sha256(f"{text}|{tokenizer.eos_token_id}|{tokenizer.bos_token_id}".encode()).hexdigest()


def _common_prefix(a: list[int], b: list[int]) -> int:
    if b[:len(a)] == a:  # the usual case: the prefix tokenizes to exactly the start of the whole text
        return len(a)
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """tokenizer.encode(text, add_special_tokens=True) of every text. A standard fast tokenizer takes the batch
    in one call of its Rust backend, without the character offsets the transformers call also computes (the
    tokenizer's own call on the first text sets the backend as it tokenizes, and must agree); a tokenizer with
    an encode of its own (remote code) is called text by text."""
    from transformers import PreTrainedTokenizerBase

    kind = type(tokenizer)
    batched = getattr(tokenizer, "is_fast", False) and kind.encode is PreTrainedTokenizerBase.encode \
        and kind.__call__ is PreTrainedTokenizerBase.__call__
    if not batched or len(texts) < 2:
        return [tokenizer.encode(text, add_special_tokens=True) for text in texts]
    first = tokenizer(texts[:1], add_special_tokens=True, return_attention_mask=False,
                      return_token_type_ids=False)["input_ids"][0]
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # tokenizers >= 0.21: no offsets
    ids = [encoding.ids for encoding in encode(texts, add_special_tokens=True)]
    if ids[0] != first:  # a backend set up differently from the tokenizer's own call: take the slow road
        return tokenizer(texts, add_special_tokens=True, return_attention_mask=False,
                         return_token_type_ids=False)["input_ids"]
    return ids


def render_batch(template, records: list[dict]) -> tuple[list[str], list[str], list[int]]:
    """Each record's conversation as one text; the prefixes that bound its responses; its turn count."""
    texts, prefixes, turns = [], [], []
    for record in records:
        segments = template.segments(record["instruction"], record["input"], record["output"],
                                     record["history"], record["system"])
        text = ""
        for turn, (prompt, response) in enumerate(segments):
            text += prompt
            prefixes.append(text)  # where this turn's response starts
            text += response
            if turn < len(segments) - 1:
                prefixes.append(text)  # where it ends (the last one runs to the end)
        texts.append(text)
        turns.append(len(segments))
    return texts, prefixes, turns


def batch_ids(tokenizer, rendered: tuple[list[str], list[str], list[int]]) -> list[list[int]]:
    """The token ids of a rendered batch's texts, then of its prefixes: one tokenizer call (the part the Rust
    tokenizer runs on its own threads, without the GIL)."""
    texts, prefixes, _ = rendered
    return _token_ids(tokenizer, texts + prefixes)


def labelled(tokenizer, template, rendered: tuple[list[str], list[str], list[int]], ids: list[list[int]],
             cutoff_len: int, train_on_inputs: bool) -> list[dict | None]:
    """The examples of a rendered batch from its `batch_ids`: labels are the tokens between the tokenized
    prefixes that bound each response."""
    texts, _, turns = rendered
    all_prefixes = iter(ids[len(texts):])
    eos = None if template.ends_turns_itself() else tokenizer.eos_token_id
    out: list[dict | None] = []
    for ids_of_text, n_turns in zip(ids, turns):
        ids_of_text = list(ids_of_text)
        labels = list(ids_of_text) if train_on_inputs else [-100] * len(ids_of_text)
        for turn in range(n_turns):
            start = _common_prefix(next(all_prefixes), ids_of_text)
            stop = len(ids_of_text) if turn == n_turns - 1 else _common_prefix(next(all_prefixes), ids_of_text)
            labels[start:stop] = ids_of_text[start:stop]
        if eos is not None:
            ids_of_text.append(eos)
            labels.append(eos)
        ids_of_text, labels = ids_of_text[:cutoff_len], labels[:cutoff_len]
        out.append(None if labels.count(-100) == len(labels) else {"input_ids": ids_of_text, "labels": labels})
    return out


def encode_batch(tokenizer, template, records: list[dict], cutoff_len: int,
                 train_on_inputs: bool) -> list[dict | None]:
    """Token ids and labels of each record; None where truncation leaves no response token.

    The conversation is rendered to one text and tokenized at once, with the tokenizer's own special tokens
    (bos, ChatGLM's [gMASK] sop), exactly as the front-ends tokenize a prompt (`template.prompt_for`), so the
    ids of every turn up to a response are what inference feeds the model. Masks come from rendering prefixes:
    a response's tokens are those between the tokenized prefix ending with its prompt and the one ending with
    it. The end of a turn is the template's own suffix (never followed by an eos of ours, so `<|im_end|>` is
    not doubled); a template without one gets eos after the last response only, which teaches the model to
    stop while the history keeps the template's own text, as each family's prompt code builds it.
    The three steps (render_batch, batch_ids, labelled) are apart so a caller can overlap them across batches.
    """
    rendered = render_batch(template, records)
    return labelled(tokenizer, template, rendered, batch_ids(tokenizer, rendered), cutoff_len, train_on_inputs)


def encode(tokenizer, template, record: dict, cutoff_len: int, train_on_inputs: bool) -> dict | None:
    """Token ids and labels of one record (see encode_batch); None when truncation leaves no response token."""
    return encode_batch(tokenizer, template, [record], cutoff_len, train_on_inputs)[0]
