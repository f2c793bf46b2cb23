"""The training loss, computed only where there is something to predict.

SFT trains on response tokens only (70 % of the tokens of Alpaca-style data, much less of long prompts), yet a
model's own loss runs the LM head and a float32 log-softmax over the whole vocabulary at every position. Here a
hook hands the LM head only the hidden states of positions that have a label, and the cross entropy runs over
those rows: the same loss and gradients (the dropped positions contribute zero to both), with the head's matmul
and the vocabulary-wide softmax cut to the labelled rows. The reduction is the model's own: a sum over the
tokens divided by the label count of the whole (accumulated, all-process) batch when the Trainer passes it, so
the loss does not depend on how a batch is split.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def shifted_labels(labels):
    """Labels aligned with the logits: position t predicts token t + 1; the last position predicts nothing."""
    import torch

    return torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)


def labelled_rows_loss(model, head, inputs: dict, num_items_in_batch=None):
    """Cross entropy over the labelled positions only; None if the model's forward did not keep the head's
    output as the logits (a model that reshapes or post-processes them across positions)."""
    import torch

    inputs = dict(inputs)
    target = shifted_labels(inputs.pop("labels"))
    keep = target != -100
    handle = head.register_forward_pre_hook(lambda _module, args: (args[0][keep], *args[1:]))
    try:
        logits = model(**inputs, use_cache=False).logits
    finally:
        handle.remove()
    count = int(keep.sum())
    if logits.dim() != 2 or logits.shape[0] != count:
        return None
    total = torch.nn.functional.cross_entropy(logits.float(), target[keep], reduction="sum")
    if num_items_in_batch is None:
        return total / max(count, 1)
    return total / num_items_in_batch  # an int, or a 0-dim tensor (it divides on any device)
