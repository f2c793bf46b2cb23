"""Batches for the Trainer: right-padded rows (packed rows have their collator in unitune/packing.py)."""

from __future__ import annotations


class Collator:
    """Pads a batch to its longest example (right side for training), labels padded with -100."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict]) -> dict:
        out = pad_right(batch, {"input_ids": self.pad_token_id, "labels": -100})
        out["attention_mask"] = (out.pop("_lengths")[:, None] > _columns(out["input_ids"])).long()
        return out


def _columns(ids):
    import torch

    return torch.arange(ids.shape[1])[None, :]


def pad_right(batch: list[dict], fills: dict[str, int]) -> dict:
    """The `fills` fields of every row as one right-padded long tensor each, plus `_lengths` of the rows."""
    import torch

    lengths = [len(b["input_ids"]) for b in batch]
    width = max(lengths)
    out = {key: torch.full((len(batch), width), fill, dtype=torch.long) for key, fill in fills.items()}
    for row, (b, n) in enumerate(zip(batch, lengths)):
        for key in fills:
            out[key][row, :n] = torch.as_tensor(b[key])
    out["_lengths"] = torch.tensor(lengths)
    return out
