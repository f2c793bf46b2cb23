"""Shared test fixtures: offline + CPU by construction, and tiny models of every --model_type.

    def test_something(tiny_model):
        path = tiny_model("chatglm")  # a directory with config, weights and tokenizer

The remote-code families (chatglm, baichuan, internlm2, moss) are the real published checkpoints' code in
../shared/fixtures/remote (tests skip where it is absent); load them through unitune.loader, which converts or
patches them, with trust_remote_code=True.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `unitune` and `tests.tiny` import under plain `pytest` too, not only `python -m`
    sys.path.insert(0, str(REPO))

# Set before anything imports huggingface_hub / transformers: they read these once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run fastest on one thread; several intra-op threads only spin against each other (and against
# other test runs) on a small shared machine: measured 5-10x less CPU per test here.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    # CPU unless the run selects gpu tests: the loader moves models to CUDA when it sees one, which would
    # make CPU tests depend on the machine. Hidden before torch first initializes CUDA.
    markexpr = config.getoption("markexpr", "") or ""
    if not ("gpu" in markexpr and "not gpu" not in markexpr):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


@pytest.fixture(autouse=True)
def offline_cpu(monkeypatch):
    """Every test runs offline; one that sets these variables gets them back afterwards."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(family) -> Path of a tiny random model + tokenizer for that --model_type, built once per session.

    Families: tests.tiny.FAMILIES (every entry of unitune.models.MODELS). Same weights every build (seeded).
    Treat the directory as read-only: other tests share it.
    """
    from tests.tiny import build_model

    built: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in built:
            built[family] = build_model(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return built[family]

    return make
