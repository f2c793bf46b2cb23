#!/usr/bin/env python3
"""Data preparation speed, side by side in one run, one JSON: unitune's pipeline against LLaMA-Factory's.

    python bench/data_speed.py            # 1M generated Alpaca-shaped records (about 400 MB of JSON Lines)
    python bench/data_speed.py --quick    # 5k records (CI runs this, with --no-peers)
    python bench/data_speed.py --records 200000 --no-peers

Every run prepares the same file (generated deterministically: instruction, optional input, output, with
Alpaca's mean lengths) with the same tokenizer (a BPE trained on the records, beside a tiny llama config),
the alpaca template and the same cutoff, each in its own process, one after the other:
- unitune_cold: the training flow's data step (unitune.train.prepare_data: read, check and normalize, load the
  tokenizer, encode), into an empty cache, with unitune's default (one process, the Rust tokenizer's threads);
- unitune_cached: the same again: a cache hit;
- unitune_cached_to_training: uniform_finetune.py --max_steps 1 on that cache: seconds from the command's start
  until training starts (the training progress bar's first line on its stderr, timed as it is written);
- unitune_imports_only: a process that only imports what a training run imports (torch, transformers, peft
  with bitsandbytes, datasets): the part of unitune_cached_to_training no data or cache can shorten;
- llamafactory_default / llamafactory_num_proc_<cores>: LLaMA-Factory's own data step (what its run_sft calls
  before loading the model: load_tokenizer, get_template_and_fix_tokenizer, get_dataset) with its default
  preprocessing_num_workers (None: one process) and with one process per core, each into
  an empty HF datasets cache; llamafactory_cached: its default again on that cache. Built by
  ../shared/peers/llamafactory.sh (skipped with --no-peers or where it cannot be built).
Reported per run: records/s (records over the data step's seconds, measured inside the process from before
reading to the tokenized dataset), the process's wall time and CPU time (with its workers': on a machine
shared with other jobs, wall time stretches and CPU time does not), and the peak memory of the process with all its
worker processes, sampled every 50 ms: RSS summed (pages a parent shares with its forked workers counted in
each: an upper bound) and PSS summed (shared pages divided among them: what the job holds). Ratios compare
runs of this one command only.
Writes bench/results/data_speed.json (or --out) atomically and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT.parent / "shared" / "peers" / "llamafactory.sh"
CUTOFF = 512
WORDS = ("the of and to a in is that for it as with was on be by this are from at or an model data time people "
         "year way day man thing woman life child world school state family student group country problem hand "
         "part place case week company system program question work government number night point home water "
         "room mother area money story fact month lot right study book eye job word business issue side kind "
         "head house service friend father power hour game line end member law car city community name "
         "president team minute idea kid body information back parent face others level office door health "
         "person art war history party result change morning reason research girl guy moment air teacher force "
         "education write explain describe list give create find make generate summarize translate classify "
         "rewrite suggest compare identify calculate answer following sentence text paragraph article").split()


# ---------------------------------------------------------------- workload
def generate(path: Path, count: int, seed: int = 0) -> None:
    """Alpaca-shaped records (instruction ~13 words, input on 40% ~7 words, output ~45 words), deterministic."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    with path.open("w", encoding="utf-8") as fh:
        for start in range(0, count, 10_000):
            n = min(10_000, count - start)
            lengths = np.stack([rng.integers(4, 23, n), rng.integers(3, 12, n) * (rng.random(n) < 0.4),
                                rng.integers(10, 81, n)], axis=1)
            pool = words[rng.integers(0, len(words), int(lengths.sum()))].tolist()
            at, lines = 0, []
            for a, b, c in lengths.tolist():
                instruction, at = " ".join(pool[at:at + a]), at + a
                given, at = " ".join(pool[at:at + b]), at + b
                output, at = " ".join(pool[at:at + c]), at + c
                lines.append(json.dumps({"instruction": instruction.capitalize() + ".", "input": given,
                                         "output": output.capitalize() + "."}))
            fh.write("\n".join(lines) + "\n")


def build_model(root: Path, data_file: Path) -> Path:
    """A tiny llama config + weights with a BPE tokenizer trained on the first records."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    with data_file.open(encoding="utf-8") as fh:
        sample = [json.loads(line) for _, line in zip(range(5000), fh)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([" ".join(r.values()) for r in sample],
                            trainers.BpeTrainer(vocab_size=8192, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    model_dir = root / "model"
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
                         pad_token_id=3, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    return model_dir


# ---------------------------------------------------------------- measuring a process and its workers
def _tree_memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of `pid` and all its descendants, summed. RSS counts pages shared between a parent and its
    forked workers once in each (an upper bound); PSS shares them out (what the job really holds)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    rss = pss = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            with open(f"/proc/{current}/smaps_rollup") as fh:
                fields = {line.split(":")[0]: int(line.split()[1]) for line in fh if line.split(":")[0] in
                          ("Rss", "Pss")}
        except (OSError, ValueError, IndexError):
            continue
        rss, pss = rss + fields.get("Rss", 0), pss + fields.get("Pss", 0)
    return rss / 1024, pss / 1024


TRAINING_STARTS = b"training:   0%"  # the progress bar's first line: the Trainer's on_train_begin


def measure(argv: list[str], env: dict | None = None, timeout: float = 7200, marker: bytes | None = None) -> dict:
    """Run one measurement alone: its status, last stdout line (JSON), wall seconds and peak tree RSS; with
    `marker`, also the seconds from the start until it first appears on stderr (`seconds_to_marker`)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    streams = {"out": b"", "err": b""}
    seen: dict[str, float] = {}

    def read(key: str, stream) -> None:  # chunk by chunk, as the child writes, so the marker's time is exact
        while chunk := os.read(stream.fileno(), 65536):
            streams[key] += chunk
            if marker and key == "err" and "marker" not in seen and marker in streams[key][-len(chunk) - 64:]:
                seen["marker"] = time.perf_counter() - started

    readers = [threading.Thread(target=read, args=(k, f), daemon=True)
               for k, f in (("out", proc.stdout), ("err", proc.stderr))]
    for reader in readers:
        reader.start()
    peak = peak_pss = 0.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaped here: its CPU time with its workers'
        if pid:
            break
        rss, pss = _tree_memory_mb(proc.pid)
        peak, peak_pss = max(peak, rss), max(peak_pss, pss)
        if time.perf_counter() - started > timeout:
            proc.kill()
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    wall = time.perf_counter() - started
    cpu = usage.ru_utime + usage.ru_stime
    out, err = (streams[k].decode(errors="replace") for k in ("out", "err"))
    if proc.returncode != 0:
        return {"status": "failed", "error": (err.strip().splitlines() or ["?"])[-1], "wall_seconds": wall,
                "cpu_seconds": cpu}
    if marker and "marker" not in seen:
        return {"status": "failed", "error": f"{marker.decode()!r} never appeared on stderr", "wall_seconds": wall,
                "cpu_seconds": cpu}
    lines = [line for line in out.strip().splitlines() if line.startswith("{")]
    return {"status": "ok", **(json.loads(lines[-1]) if lines else {}), "wall_seconds": wall, "cpu_seconds": cpu,
            "peak_rss_mb": peak, "peak_pss_mb": peak_pss, **({"seconds_to_marker": seen["marker"]} if marker else {})}


# ---------------------------------------------------------------- the runs
UNITUNE = r'''
import json, sys, time
import datasets, transformers, torch  # imported before the clock starts, as importing llamafactory imports them
from unitune import train as T
from unitune.dataset_registry import resolve_all
model_args, data_args, _, train_args = T.parse(sys.argv[1:])
started = time.perf_counter()  # from here: read, check, load the tokenizer, encode (or find the cache)
paths = [p for name in data_args.data for p in resolve_all(name)]
tokenized = T.prepare_data(model_args, data_args, train_args, paths)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "records": tokenized.records, "examples": len(tokenized.examples),
                  "from_cache": tokenized.from_cache}))
'''

LLAMAFACTORY = r'''
import json, sys, time, yaml
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer
model_args, data_args, training_args, _, _ = get_train_args(yaml.safe_load(open(sys.argv[1])))
started = time.perf_counter()  # what run_sft does before it loads the model
tokenizer_module = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "examples": len(module["train_dataset"])}))
'''


def unitune_runs(model_dir: Path, data_file: Path, work: Path, records: int, processes: int) -> dict:
    common = ["--model_name_or_path", str(model_dir), "--data", str(data_file), "--cutoff_len", str(CUTOFF),
              "--template", "alpaca", "--output_dir", str(work / "unitune-out"), "--eval_base", "false"]
    flags = [*common, "--cache_dir", str(work / "unitune-cache")]
    runs = {}
    for name in ("unitune_cold", "unitune_cached"):
        runs[name] = measure([sys.executable, "-c", UNITUNE, *flags], env={"PYTHONPATH": str(ROOT)})
        if runs[name]["status"] == "ok":
            runs[name]["records"] = records
    train = measure([sys.executable, str(ROOT / "uniform_finetune.py"), *flags, "--max_steps", "1",
                     "--per_gpu_train_batch_size", "2", "--logging_steps", "1", "--eval_samples", "0"],
                    marker=TRAINING_STARTS)
    if train["status"] == "ok":
        train["seconds_to_training"] = train.pop("seconds_to_marker")
    runs["unitune_cached_to_training"] = train
    # what every run pays before it can start, whatever its data: importing what training imports
    script = ("import sys, datasets, peft, unitune.train\n"
              "from transformers import Trainer\nsys.stderr.write('imported\\n'); sys.stderr.flush()")
    imports = measure([sys.executable, "-c", script],
                      env={"PYTHONPATH": str(ROOT)}, marker=b"imported")
    if imports["status"] == "ok":
        imports["seconds_to_training"] = imports.pop("seconds_to_marker")
    runs["unitune_imports_only"] = imports
    # datasets' worker processes instead of the default's one process with the tokenizer's threads
    workers = f"unitune_num_proc_{processes}"
    runs[workers] = measure([sys.executable, "-c", UNITUNE, *common, "--cache_dir", str(work / "unitune-cache-workers"),
                             "--preprocessing_num_workers", str(processes)], env={"PYTHONPATH": str(ROOT)})
    if runs[workers]["status"] == "ok":
        runs[workers]["records"] = records
    for name, hit in {"unitune_cold": False, "unitune_cached": True, workers: False}.items():
        if runs[name].get("status") == "ok" and runs[name]["from_cache"] is not hit:
            runs[name] = {"status": "failed", "error": f"from_cache is {runs[name]['from_cache']}, expected {hit}"}
    return runs


def llamafactory_runs(model_dir: Path, data_file: Path, work: Path, records: int, processes: int) -> dict:
    import yaml

    venv = ROOT / ".peers" / "llamafactory"
    names = ["llamafactory_default", f"llamafactory_num_proc_{processes}", "llamafactory_cached"]
    setup = subprocess.run(["bash", str(PEERS), str(venv)], capture_output=True, text=True, timeout=1800, check=False)
    if setup.returncode != 0:
        reason = (setup.stderr.strip().splitlines() or ["install failed"])[-1]
        return {n: {"status": "skipped", "error": reason} for n in names}
    (work / "lf_data").mkdir(exist_ok=True)
    (work / "lf_data" / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": str(data_file)}}))
    runs = {}
    for name, workers, hf_cache in ((names[0], None, "hf-default"), (names[1], processes, f"hf-{processes}"),
                                    (names[2], None, "hf-default")):
        config = {"model_name_or_path": str(model_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
                  "dataset": "bench", "dataset_dir": str(work / "lf_data"), "template": "alpaca",
                  "cutoff_len": CUTOFF, "output_dir": str(work / f"lf-out-{name}"), "report_to": "none",
                  "preprocessing_num_workers": workers, "overwrite_output_dir": True}
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        runs[name] = measure([str(venv / "bin" / "python"), "-c", LLAMAFACTORY, str(path)],
                             env={"DISABLE_VERSION_CHECK": "1", "HF_DATASETS_CACHE": str(work / hf_cache),
                                  "HF_HUB_OFFLINE": "1"})
        if runs[name]["status"] == "ok":
            runs[name]["records"] = records
    return runs


# ---------------------------------------------------------------- report
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5k records (CI)")
    parser.add_argument("--records", type=int, default=None, help="records to generate (default 1,000,000)")
    parser.add_argument("--no-peers", action="store_true", help="skip LLaMA-Factory")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "data_speed.json"))
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    import shutil
    import tempfile

    count = args.records or (5_000 if args.quick else 1_000_000)
    work = Path(args.work or tempfile.mkdtemp(prefix="unitune-data-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    data_file = work / "train.jsonl"
    started = time.perf_counter()
    generate(data_file, count)
    generated = time.perf_counter() - started
    model_dir = build_model(work, data_file)
    processes = os.cpu_count() or 1
    runs = unitune_runs(model_dir, data_file, work, count, processes)
    if not args.no_peers:
        runs.update(llamafactory_runs(model_dir, data_file, work, count, processes))
    for run in runs.values():
        if run.get("status") == "ok" and run.get("records") and run.get("seconds"):
            run["records_per_second"] = run["records"] / run["seconds"]
    lf, ours = runs.get("llamafactory_default", {}), runs.get("unitune_cold", {})
    targets = {}
    if lf.get("status") == "ok" and ours.get("status") == "ok":
        targets = {"throughput_vs_llamafactory_default": ours["records_per_second"] / lf["records_per_second"],
                   "peak_rss_vs_llamafactory_default": ours["peak_rss_mb"] / lf["peak_rss_mb"],
                   "peak_pss_vs_llamafactory_default": ours["peak_pss_mb"] / lf["peak_pss_mb"],
                   # the whole process's CPU time, workers included: what an idle machine's cores must give
                   "cpu_seconds_vs_llamafactory_default": ours["cpu_seconds"] / lf["cpu_seconds"]}
    if runs["unitune_cached_to_training"].get("status") == "ok":
        targets["cached_seconds_to_training"] = runs["unitune_cached_to_training"]["seconds_to_training"]
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpu_count": processes, "python": platform.python_version()},
              "workload": {"records": count, "file": "generated JSON Lines (bench/data_speed.py generate, seed 0)",
                           "file_mb": data_file.stat().st_size / 2**20, "generate_seconds": generated,
                           "tokenizer": "BPE, vocab 8192, trained on the first 5000 records", "template": "alpaca",
                           "cutoff_len": CUTOFF},
              "command": "python bench/data_speed.py" + (" --quick" if args.quick else "")
                         + (f" --records {args.records}" if args.records else "") + (" --no-peers" if args.no_peers else ""),
              "targets": targets, "runs": runs}
    from unitune.writable import write_atomic

    write_atomic(Path(args.out), json.dumps(result, indent=2))
    print(table(result))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return result


def table(result: dict) -> str:
    lines = ["| run | records/s | data step s | wall s | CPU s | peak RSS MiB | peak PSS MiB | status |",
             "|---|---|---|---|---|---|---|---|"]
    for name, run in result["runs"].items():
        if run.get("status") != "ok":
            lines.append(f"| {name} | | | | | | | {run.get('status')}: {run.get('error')} |")
            continue
        rate = f"{run['records_per_second']:.0f}" if run.get("records_per_second") else ""
        step = f"{run['seconds']:.1f}" if "seconds" in run else f"to training {run['seconds_to_training']:.1f}"
        lines.append(f"| {name} | {rate} | {step} | {run['wall_seconds']:.1f} | {run['cpu_seconds']:.1f} | "
                     f"{run['peak_rss_mb']:.0f} | {run['peak_pss_mb']:.0f} | ok |")
    for key, value in result["targets"].items():
        lines.append(f"\n{key}: {value:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
