"""Where this process stands in a torchrun / accelerate launch: rank, local rank, device, main-first work.

Launchers set RANK, LOCAL_RANK and WORLD_SIZE in the environment; one process is the whole world otherwise.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def device_for_this_process() -> str:
    """cuda:<local rank> when there is a GPU (each process its own), else cpu."""
    import torch

    return f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """The main process runs the block first (e.g. tokenizing into the cache); the others then run it (and
    find the cache). Forms the process group early (gloo on CPU, NCCL on GPU) through accelerate, which the
    Trainer later reuses."""
    if world_size() == 1:
        yield
        return
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    with state.main_process_first():
        yield
