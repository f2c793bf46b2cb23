"""Non-finite numbers stop a run: a NaN weight after loading, a NaN/inf loss or gradient norm while training.

Without these checks a broken checkpoint (e.g. a buffer transformers 5 refilled with uninitialized memory)
trains to a NaN loss that the Trainer's `logging_nan_inf_filter` hides, the run reports a made-up final
loss, exits 0 and saves an all-NaN adapter.
"""

from __future__ import annotations

from typing import Any

from unitune.errors import UnituneError


def check_finite_weights(model: Any, where: str) -> None:
    """Raise a one-line UnituneError naming the first parameter or buffer that holds NaN or inf."""
    import torch

    tensors = [("parameter", name, t) for name, t in model.named_parameters()]
    tensors += [("buffer", name, t) for name, t in model.named_buffers()]
    for kind, name, tensor in tensors:
        if tensor.device.type == "meta" or not (tensor.is_floating_point() or tensor.is_complex()):
            continue  # k-bit weights are packed integers; meta tensors hold no numbers
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise UnituneError(f"{where}: {kind} {name!r} holds {bad} non-finite (NaN or inf) value(s) after "
                               f"loading; the checkpoint or its modeling code is broken")


class NonFiniteTraining(UnituneError):
    """A NaN or inf loss / gradient norm: the run stops, no adapter is written."""


def guarded_trainer_class():
    """A transformers Trainer that stops at the first non-finite loss or gradient (checked every step)."""
    import torch
    from transformers import Trainer, TrainerCallback

    def stop(state, what: str, value: float, output_dir: str) -> None:
        from pathlib import Path

        kept = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])
                      if p.name.split("-")[-1].isdigit() else -1)
        last = f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint had been saved yet"
        raise NonFiniteTraining(f"training stopped at step {state.global_step + 1}: the {what} is {value} "
                                f"(non-finite); no adapter was written, {last}")

    class GradientGuard(TrainerCallback):
        # runs after clipping and before the optimizer step: a non-finite norm leaves NaN in the gradients
        # (clipping multiplies by norm/nan), so one look at them catches both cases before weights change
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
            if grads:
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
                if not bool(torch.isfinite(norm)):
                    stop(state, "gradient norm", float(norm), args.output_dir)

    class GuardedTrainer(Trainer):
        labelled_rows_only = False  # True: the loss runs the LM head on labelled positions only (unitune.loss)

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(GradientGuard())

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            self.loss_is_scaled_for_ga = None  # the Trainer's own rule, unless our loss below decides
            if self.labelled_rows_only and not return_outputs and "labels" in inputs:
                from unitune.loss import labelled_rows_loss

                head = self.accelerator.unwrap_model(model).get_output_embeddings()
                loss = labelled_rows_loss(model, head, inputs, num_items_in_batch) if head is not None else None
                if loss is not None:
                    self.loss_is_scaled_for_ga = num_items_in_batch is not None
                    if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                        loss = loss * self.accelerator.num_processes  # the Trainer's rule: the count is global
                    return loss
                self.labelled_rows_only = False  # this model post-processes its logits: its own loss from now on
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            if not bool(torch.isfinite(loss.detach()).all()):
                stop(self.state, "loss", float(loss.detach().float().mean()), self.args.output_dir)
            return loss

    return GuardedTrainer
