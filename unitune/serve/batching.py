"""Continuous batching over a Hugging Face causal LM: one forward per step for every running sequence.

A request joins between two steps: its prompt is prefilled ALONE (no padding, so its prompt's KV cache
and first token are exactly those of a request served by itself), then its cache is merged into the
running batch's DynamicCache with left padding. Each step feeds every row its last token with its
own position id (its count of real tokens: padding never shifts positions) and the attention mask of
real tokens, so a row attends to its own tokens only. Rows that finish (eos, max_new_tokens, a stop
string, a cancelled request) leave before the next step; padding columns no row needs are dropped.

What is left between "alone" and "in a batch" is float rounding: matrix kernels sum in an order that can
depend on the batch size and the padded length (about 1e-5 on the embedded model's fp32 logits). Greedy
choices only change where two logits tie that closely; tests/test_serve.py checks equal outputs.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

log = logging.getLogger(__name__)


def batchable_cache(cache: Any) -> bool:
    """Whether a prefill's cache can be merged into a batch: a DynamicCache of plain full-attention layers.

    Sliding-window layers (Mistral) drop old tokens by their own count, and remote-code models return
    their own tuples: those models serve one request at a time."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    return isinstance(cache, DynamicCache) and bool(cache.layers) and all(
        type(layer) is DynamicLayer and layer.is_initialized for layer in cache.layers)


class Row:
    """One running request: its decoding rule, its text so far and where it is in the batch."""

    def __init__(self, job: Any, chooser: Any, text: Any, prompt_tokens: int) -> None:
        self.job, self.chooser, self.text = job, chooser, text
        self.prompt_tokens = prompt_tokens
        self.last = -1  # the token chosen last: the next step's input
        self.finish_reason: str | None = None  # set once it is done: "stop", "length" or "cancelled"

    def take(self, token: int) -> None:
        """Record the chosen token, hand the text that can be shown to the client and see whether it is done."""
        self.last = token
        piece = self.text.add([token])
        job, n = self.job, len(self.text.ids)
        if piece:
            job._put((piece, self.chooser.take_logprobs()), now=False)  # the engine wakes the client after the step
        if self.text.stopped or token in self.chooser.eos:
            self.finish_reason = "stop"
        elif n >= job.max_new_tokens:
            self.finish_reason = "length"
        elif job.cancel.is_set():
            self.finish_reason = "cancelled"


class Batch:
    """The running rows, their merged KV cache and attention mask (rows x cached length, 1 = a real token)."""

    def __init__(self, model: Any) -> None:
        from unitune.compat import cache_field

        self.model, self.cache_name = model, cache_field()
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.positions = "position_ids" in inspect.signature(base.forward).parameters
        self.logits_to_keep = bool(getattr(base, "_supports_logits_to_keep", lambda: False)())
        self.rows: list[Row] = []
        self.cache: Any = None
        self.mask: Any = None

    def __len__(self) -> int:
        return len(self.rows)

    def _forward(self, input_ids, mask, cache=None):
        import torch

        kwargs: dict[str, Any] = {"use_cache": True}
        # an all-ones mask is left out, as generate() does: a request alone runs exactly generate()'s computation
        kwargs["attention_mask"] = None if bool(mask.all()) else mask
        if self.positions:
            start = mask.sum(-1, keepdim=True) - input_ids.shape[1]
            kwargs["position_ids"] = start + torch.arange(input_ids.shape[1], device=mask.device)
        if cache is not None:
            kwargs[self.cache_name] = cache
        if self.logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=input_ids, **kwargs)
        return out.logits[:, -1].float(), out[self.cache_name]

    def prefill(self, prompt_ids: list[int]):
        """(last-position scores, cache) of one prompt run alone."""
        import torch

        device = self.model.device
        ids = torch.tensor([prompt_ids], device=device)
        return self._forward(ids, torch.ones_like(ids))

    def join(self, row: Row, cache: Any) -> None:
        """Merge a prefilled row into the batch: both sides left-padded to the longer cached length."""
        import torch
        from torch.nn.functional import pad

        length = cache.get_seq_length()
        mask = torch.ones(1, length, dtype=torch.long, device=self.model.device)
        if not self.rows:
            self.rows, self.cache, self.mask = [row], cache, mask
            return
        width = max(length, self.mask.shape[1])
        grow, fill = width - self.mask.shape[1], width - length
        for mine, theirs in zip(self.cache.layers, cache.layers):
            for name in ("keys", "values"):
                ours, new = getattr(mine, name), getattr(theirs, name)
                setattr(mine, name, torch.cat([pad(ours, (0, 0, grow, 0)), pad(new, (0, 0, fill, 0))]))
        self.mask = torch.cat([pad(self.mask, (grow, 0)), pad(mask, (fill, 0))])
        self.rows.append(row)

    def step(self) -> list[Row]:
        """One forward over every row; each takes its next token. Returns the rows that finished (and left)."""
        import torch

        tokens = torch.tensor([[row.last] for row in self.rows], device=self.mask.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        scores, self.cache = self._forward(tokens, self.mask, self.cache)
        plain = [row.chooser.plain for row in self.rows]
        for i, row in enumerate(self.rows):
            if plain[i]:
                row.chooser.ban_eos(scores[i])
        argmax = scores.argmax(-1).tolist() if any(plain) else None  # the plain rows' tokens, in one operation
        for i, row in enumerate(self.rows):
            try:
                row.take(row.chooser.taken(argmax[i]) if plain[i] else row.chooser.choose(scores[i:i + 1]))
            except Exception as err:  # this request's failure (its own settings), not the others'
                log.exception("choosing a token failed")
                row.job.error, row.finish_reason = err, "error"
        return self.drop_finished()

    def drop_finished(self) -> list[Row]:
        import torch

        done = [row for row in self.rows if row.finish_reason is not None]
        if not done:
            return []
        keep = [i for i, row in enumerate(self.rows) if row.finish_reason is None]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.mask = None
            return done
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        first = int(self.mask.any(0).nonzero()[0])  # columns before it are padding in every row left
        if first:
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
        return done
