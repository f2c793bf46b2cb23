"""The evaluation command: flags, checks before anything loads, predictions, scoring, the report."""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from unitune import args as A
from unitune.errors import UnituneError
from unitune.evaluation import BENCHMARKS, get_benchmark

log = logging.getLogger("unitune")
USAGE = (f"usage: python -m unitune.eval {{{','.join(BENCHMARKS)},compare}} ... (--help after the benchmark "
         f"lists its flags)")


@dataclass
class EvalArgs:
    predictions: str | None = A.flag(None, "score this JSON Lines file of predictions; no model is loaded")
    output_dir: str | None = A.flag(None, "where result.json / .md / .png go; default output/eval/<benchmark>")
    label: str | None = A.flag(None, "name of this run in tables and compare; default: the model's")
    data_dir: str | None = A.flag(None, "the benchmark's data (MMCU files, a C-Eval / CMMLU copy, Belle-eval)")
    data: str | None = A.flag(None, "one data file (Belle-eval set, ie records); default: the benchmark's own")
    split: str | None = A.flag(None, "C-Eval / CMMLU split under --data_dir; default val (C-Eval), test (CMMLU)")
    subjects: list | None = A.flag(None, "only these subjects (C-Eval / CMMLU)", nargs="+")
    method: str | None = A.flag(None, "logits (next-token A/B/C/D, base models) or generate (then extract); "
                                   "default logits for C-Eval / CMMLU, generate otherwise",
                                   choices=["logits", "generate"])
    n_shot: int = A.flag(0, "examples from the dev split in each prompt (0 or e.g. 5)")
    max_samples: int | None = A.flag(None, "answer only the first N questions (a quick look, not a score)")
    batch_size: int = A.flag(8, "questions per batch (local model) or concurrent requests (endpoint)")
    model_base_url: str | None = A.flag(None, "an OpenAI-compatible endpoint serving the model under test")
    model_name: str | None = A.flag(None, "the model id that endpoint serves")
    model_api_key: str | None = A.flag(None, "API key of that endpoint")
    judge_base_url: str | None = A.flag(None, "Belle-eval: the judge's OpenAI-compatible endpoint")
    judge_model: str | None = A.flag(None, "Belle-eval: the judge model id")
    judge_api_key: str | None = A.flag(None, "Belle-eval: the judge's API key; default $OPENAI_API_KEY")
    judge_prompts: str | None = A.flag(None, "Belle-eval: the judge prompts file (JSON Lines {class, prompt})")
    judge_cache: str | None = A.flag(None, "Belle-eval: judge reply cache; default ~/.cache/unitune/judge")
    judge_concurrency: int = A.flag(4, "Belle-eval: judge calls in flight at most")
    judge_retries: int = A.flag(2, "Belle-eval: ask again this many times when a reply has no score")
    judge_backoff: float = A.flag(1.0, "Belle-eval: first wait in seconds after a 429 / 5xx (doubles each time)")


@dataclass
class Options(EvalArgs):
    benchmark: str = ""


def parse(argv: list[str]) -> tuple[Options, A.ModelArgs, A.GenerationArgs]:
    name = argv[0]
    bench = get_benchmark(name)
    (model_args, gen_args, eval_args), given = A.parse(
        [A.ModelArgs, A.GenerationArgs, EvalArgs], argv[1:], prog=f"python -m unitune.eval {name}",
        description=bench.help)
    opts = Options(**dataclasses.asdict(eval_args), benchmark=name)
    for key, value in bench.defaults:
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    opts.method = opts.method or "generate"
    opts.output_dir = opts.output_dir or str(Path("output") / "eval" / name)
    if "max_new_tokens" not in given and opts.method == "generate" and name in ("mmcu", "ceval", "cmmlu"):
        gen_args.max_new_tokens = 32  # an option letter, maybe a sentence around it
    return opts, model_args, gen_args


def check(opts: Options, impl, model_args) -> None:
    if opts.method not in impl.METHODS:
        raise UnituneError(f"--method {opts.method}: {opts.benchmark} is scored by {', '.join(impl.METHODS)}")
    for flag_name in ("batch_size", "judge_concurrency"):
        if getattr(opts, flag_name) < 1:
            raise UnituneError(f"--{flag_name} must be at least 1, got {getattr(opts, flag_name)}")
    if opts.judge_retries < 0:
        raise UnituneError(f"--judge_retries must be 0 or more, got {opts.judge_retries}")
    if opts.predictions and opts.model_base_url:
        raise UnituneError("give --predictions (score a file) or --model_base_url (ask an endpoint), not both")
    impl.check(opts)


def make_answerer(opts: Options, model_args, gen_args):
    from unitune.evaluation.answerers import EndpointAnswerer, LocalAnswerer

    if opts.model_base_url:
        return EndpointAnswerer(opts.model_base_url, opts.model_name, opts.model_api_key, gen_args, opts.batch_size)
    return LocalAnswerer(model_args, gen_args, opts.batch_size)


def default_label(opts: Options, model_args) -> str:
    if opts.label:
        return opts.label
    if opts.predictions:
        return Path(opts.predictions).stem
    if opts.model_base_url:
        return str(opts.model_name)
    return Path(model_args.adapter or model_args.base_path).name


def evaluate(opts: Options, model_args, gen_args) -> dict:
    """One benchmark run; returns the result dict it also wrote under opts.output_dir."""
    from unitune.evaluation.records import read_predictions
    from unitune.evaluation.report import write_result

    impl = get_benchmark(opts.benchmark).impl()
    check(opts, impl, model_args)
    settings = {"method": opts.method, "n_shot": opts.n_shot}
    for name in ("result.json", "result.md", "result.png"):  # a failed run must not leave an older result
        (Path(opts.output_dir) / name).unlink(missing_ok=True)
    if opts.predictions:
        records, source = read_predictions(opts.predictions, impl.FIELDS), opts.predictions
    else:
        answerer = make_answerer(opts, model_args, gen_args)  # model flags are checked here, nothing loaded yet
        questions = impl.questions(opts)[: opts.max_samples or None]
        from unitune.evaluation.predict import predict

        records, source = predict(opts.benchmark, opts.method, questions, answerer, opts.output_dir, opts.batch_size)
        settings["answerer"] = answerer.identity()
    result = impl.score(records, opts, source)
    if result["overall"] is None:
        raise UnituneError(f"{opts.benchmark}: no answer could be scored ({result['unparsed']} "
                           f"{result.get('unparsed_label', 'unparsed')}); nothing to report")
    result.update(label=default_label(opts, model_args), predictions=str(source), settings=settings)
    write_result(result, opts.output_dir)
    return result


# ---------------------------------------------------------------- benchmarks at the end of training
TRAIN_BENCHMARKS = ("mmcu", "ceval", "cmmlu", "ie")  # belle needs a judge: run it on the saved adapter


def training_options(names: list[str], data_root: str | None, output_dir: str | Path) -> list[Options]:
    """One checked Options per --eval_benchmarks name, before any model loads. Data: <data_root>/<name>
    (a folder; for ie an optional <data_root>/ie.jsonl, else the embedded held-out set)."""
    from unitune.paths import data_dir

    root = Path(data_root) if data_root else data_dir()
    out = []
    for name in names:
        bench = get_benchmark(name)
        if name not in TRAIN_BENCHMARKS:
            raise UnituneError(f"--eval_benchmarks {name}: needs a judge model; score the saved adapter with "
                               f"python -m unitune.eval {name} --lora_dir ... after training")
        opts = Options(benchmark=name, output_dir=str(Path(output_dir) / "eval" / name))
        for key, value in bench.defaults:
            setattr(opts, key, value)
        opts.method = opts.method or "generate"
        if name == "ie":
            opts.data = str(root / "ie.jsonl") if (root / "ie.jsonl").is_file() else None
        else:
            if not (root / name).is_dir():
                raise UnituneError(f"--eval_benchmarks {name}: no data folder {root / name} (put a copy of "
                                   f"{name} there, or name another folder with --eval_benchmark_dir)")
            opts.data_dir = str(root / name)
        check(opts, bench.impl(), None)
        out.append(opts)
    return out


def evaluate_loaded(opts: Options, loaded, model_args, max_new_tokens: int, label: str) -> dict:
    """A benchmark run on a model already in memory (the base before training, the tuned model after)."""
    from unitune.evaluation.answerers import LocalAnswerer
    from unitune.evaluation.predict import predict
    from unitune.evaluation.report import summary_line, write_result

    gen_args = A.GenerationArgs(max_new_tokens=32 if opts.benchmark != "ie" else max_new_tokens)
    answerer = LocalAnswerer(model_args, gen_args, opts.batch_size, loaded=loaded)
    impl = get_benchmark(opts.benchmark).impl()
    questions = impl.questions(opts)
    records, source = predict(opts.benchmark, opts.method, questions, answerer, opts.output_dir, opts.batch_size)
    result = impl.score(records, opts, source)
    if result["overall"] is None:
        raise UnituneError(f"{opts.benchmark}: no answer could be scored")
    result.update(label=label, predictions=str(source), settings={"method": opts.method, "n_shot": opts.n_shot,
                                                                  "answerer": answerer.identity()})
    paths = write_result(result, opts.output_dir)
    log.info("%s (%s)", summary_line(result), label)
    return {"overall": result["overall"], "n": result["n"], "unparsed": result["unparsed"],
            "headline": result.get("headline"), "result": str(paths["json"])}


def main(argv: list[str] | None = None):
    from unitune.evaluation.report import compare, summary_line

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\nbenchmarks:\n" + "\n".join(f"  {b.name:8} {b.help}" for b in BENCHMARKS.values())
              + "\n  compare  several result.json files side by side (--output_dir DIR)")
        return None
    if argv[0] == "compare":
        files = [a for a in argv[1:] if not a.startswith("--")]
        out = argv[argv.index("--output_dir") + 1] if "--output_dir" in argv else "output/eval/compare"
        if out in files:
            files.remove(out)
        table, paths = compare(files, out)
        print(table + f"written: {paths['markdown']}, {paths['chart']}")
        return table
    opts, model_args, gen_args = parse(argv)
    from unitune.train import setup_logging

    setup_logging()
    result = evaluate(opts, model_args, gen_args)
    print(summary_line(result) + f" -> {Path(opts.output_dir) / 'result.json'}")
    return result
