"""Trainer callbacks shared by every method: a progress bar with loss and tokens/s, and the loss plot."""

from __future__ import annotations

import time
from pathlib import Path

from transformers import TrainerCallback


class ProgressBar(TrainerCallback):
    """One tqdm bar over optimizer steps showing the latest loss and the non-padding tokens per second."""

    def __init__(self):
        self.bar = None
        self.started = 0.0
        self.postfix: dict[str, str] = {}
        self.pending = 0  # steps done but not yet on the bar

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, desc="training", unit="step", dynamic_ncols=True)
            self.bar.update(state.global_step)
        self.started = time.time()
        self.tokens_at_start = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        elapsed = max(time.time() - self.started, 1e-6)
        self.postfix["tok/s"] = f"{(state.num_input_tokens_seen - self.tokens_at_start) / elapsed:.0f}"
        self.pending += 1
        # the Trainer logs this step's loss only after on_step_end: a step that logs moves the bar in on_log,
        # so the bar never shows a step next to the loss of an earlier one
        if not control.should_log:
            self._advance()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None:
            return
        if logs and "loss" in logs:
            self.postfix["loss"] = f"{logs['loss']:.4f}"
        self._advance()

    def on_step_begin(self, args, state, control, **kwargs):
        self._advance()  # a logged step whose log never came still counts

    def _advance(self) -> None:
        if self.bar is not None and self.pending:
            self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(self.pending)
            self.pending = 0

    def on_train_end(self, args, state, control, **kwargs):
        self._advance()
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def plot_loss(history: list[dict], path: Path) -> None:
    """Training (and validation, when present) loss against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("loss", "train"), ("eval_loss", "validation")):
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points), marker="." if len(points) < 30 else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
