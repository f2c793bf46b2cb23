"""Evaluation: a benchmark registry, one scorer module per benchmark, one runner.

    python -m unitune.eval <benchmark> [--predictions FILE | model flags] --output_dir DIR
    python -m unitune.eval compare DIR_A/result.json DIR_B/result.json --output_dir DIR

Each benchmark module offers FIELDS (what a predictions line must hold), METHODS, check(opts) (every
check a user can fail, before a model loads), questions(opts) (prompt, answer, subject ... per question)
and score(records, opts, path) -> result (see unitune.evaluation.report).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from unitune.errors import UnituneError


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str
    help: str
    defaults: tuple[tuple[str, object], ...] = ()  # flag defaults of this benchmark (e.g. C-Eval's split)

    def impl(self) -> ModuleType:
        return importlib.import_module(self.module)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("belle", "unitune.evaluation.belle", "Belle-eval: 1,000 questions scored by a judge model"),
    Benchmark("mmcu", "unitune.evaluation.mmcu", "MMCU: medicine, law, psychology, education multiple choice"),
    Benchmark("ceval", "unitune.evaluation.mcq", "C-Eval: 52 subjects in 4 categories",
              (("split", "val"), ("method", "logits"))),
    Benchmark("cmmlu", "unitune.evaluation.mcq", "CMMLU: 67 subjects in 5 categories",
              (("split", "test"), ("method", "logits"))),
    Benchmark("ie", "unitune.evaluation.ie", "extraction F1 over sets of tuples (triples, entities, events)"),
)}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise UnituneError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)} (or compare)")
    return BENCHMARKS[name]


def run(argv: list[str] | None = None):
    """`python -m unitune.eval ...` / `unitune eval ...`: one benchmark run or a comparison."""
    from unitune.evaluation.cli import main

    return main(argv)
