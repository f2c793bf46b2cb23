#!/usr/bin/env python3
"""Training throughput, side by side in one run, one JSON: unitune against the ceiling and its peers.

    python bench/train_speed.py                 # full size: ~33M llama, LoRA r 8 on q_proj/v_proj, batch 8, cutoff 512
    python bench/train_speed.py --quick         # a tiny model and a few steps (CI runs this)
    python bench/train_speed.py --peers         # also LLaMA-Factory (defaults and neat_packing + bf16)

Every run trains the same model (built from a config, random weights) on the same records
(../shared/data/alpaca/alpaca_en_demo.json, or generated records of a similar length where it is absent),
each in its own process, measured alone one after the other:
- ceiling_<dtype>: a plain PEFT step (forward, backward, AdamW) on full packed rows, fp32 and bf16 autocast;
- unitune_default: uniform_finetune.py with only the workload flags;
- unitune_unpacked_fp32: the defaults before packing and bf16 were (--packing false --compute_dtype fp32);
- unitune_packed_fp32: packing in fp32, where the default computes in bf16;
- alpaca_cot_baseline: HF Trainer + PEFT LoRA, padding to the longest, fp32, no packing (how Alpaca-CoT trains);
- llamafactory_default / llamafactory_neat_packing_bf16: via ../shared/peers/llamafactory.sh (--peers).
Reported per run: non-padding tokens/s, wall time, peak RSS, and MFU (model FLOPs — 4N per token for a frozen
base plus attention — over the matmul peak this command measures for that dtype). Ratios compare runs of
this one command only: machines differ and other jobs distort absolute numbers.
Writes bench/results/train_speed.json (or --out) atomically and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_en_demo.json"
PEERS = ROOT.parent / "shared" / "peers" / "llamafactory.sh"
FULL = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8, vocab=8192,
            records=200, steps=12, batch=8, cutoff=512)
QUICK = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab=1024,
             records=24, steps=3, batch=4, cutoff=128)


# ---------------------------------------------------------------- workload
def records(count: int) -> list[dict]:
    if SHARED_DATA.is_file():
        return json.loads(SHARED_DATA.read_text(encoding="utf-8"))[:count]
    import random

    rng = random.Random(0)  # about the demo data's lengths: ~30 words of question, ~120 of answer
    words = "the of and to a in is that for it as with was on be by this are from at or an model data".split()
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    return [{"instruction": text(rng.randint(5, 40)), "input": "", "output": text(rng.randint(40, 200))}
            for _ in range(count)]


def build_workload(root: Path, size: dict) -> tuple[Path, Path]:
    """A llama-architecture model from a config with a BPE tokenizer trained on the records; the data file."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    data = records(size["records"])
    data_file = root / "train.json"
    data_file.write_text(json.dumps(data, ensure_ascii=False))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([r["instruction"] + " " + r["input"] + " " + r["output"] for r in data],
                            trainers.BpeTrainer(vocab_size=size["vocab"], special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    model_dir = root / "model"
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=size["hidden_size"],
                         intermediate_size=size["intermediate_size"], num_hidden_layers=size["num_hidden_layers"],
                         num_attention_heads=size["num_attention_heads"], max_position_embeddings=2048,
                         bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    return model_dir, data_file


def model_flops_per_token(model_dir: Path, context: float) -> float:
    """Frozen-base LoRA: forward 2N + activation gradients 2N over the base's matmul weights, plus attention
    (QK^T and AV: 4 * layers * hidden * context forward, three times that with the backward)."""
    config = json.loads((model_dir / "config.json").read_text())
    d, layers, ffn, vocab = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"], \
        config["vocab_size"]
    matmul_params = layers * (4 * d * d + 3 * d * ffn) + d * vocab
    return 4 * matmul_params + 12 * layers * d * context


def matmul_peak(dtype: str, n: int = 2048) -> float:
    """FLOP/s of a large square matmul on this machine, in this dtype, with this process's threads: the best
    of three one-second windows (a 1024 matmul underestimated the fp32 peak: MFU came out above 100 %)."""
    import torch

    kind = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = torch.randn(n, n, dtype=kind), torch.randn(n, n, dtype=kind)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(3):
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < 1.0:
            a @ b
            runs += 1
        best = max(best, runs * 2 * n**3 / (time.perf_counter() - started))
    return best


# ---------------------------------------------------------------- the runs (each in its own process)
CEILING = r'''
import json, sys, time, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
model_dir, data_file, dtype, steps, batch, cutoff = sys.argv[1:7]
steps, batch, cutoff = int(steps), int(batch), int(cutoff)
tok = AutoTokenizer.from_pretrained(model_dir)
ids = [t for r in json.load(open(data_file)) for t in tok(r["instruction"] + r["input"] + r["output"])["input_ids"]]
ids = (ids * (batch * cutoff // max(len(ids), 1) + 1))[: batch * cutoff]
x = torch.tensor(ids).view(batch, cutoff)
model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                       LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        loss = model(input_ids=x, labels=x, use_cache=False).loss
    loss.backward(); opt.step(); opt.zero_grad()
step()
started = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"tokens": steps * batch * cutoff, "seconds": time.perf_counter() - started}))
'''

BASELINE = r'''
import json, sys, time, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments
model_dir, data_file, out, steps, batch, cutoff = sys.argv[1:7]
tok = AutoTokenizer.from_pretrained(model_dir)
PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
def encode(r):  # Alpaca-CoT's generate_and_tokenize_prompt: prompt + answer + eos, loss on the answer
    p = tok(PROMPT.format(instruction=(r["instruction"] + "\n" + r["input"]).strip()))["input_ids"]
    a = tok(r["output"])["input_ids"] + [tok.eos_token_id]
    ids = (p + a)[: int(cutoff)]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ([-100] * len(p) + a)[: int(cutoff)]}
rows = [encode(r) for r in json.load(open(data_file))]
model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                       LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
args = TrainingArguments(output_dir=out, per_device_train_batch_size=int(batch), max_steps=int(steps),
                         learning_rate=3e-4, logging_steps=1000, save_strategy="no", report_to=[], use_cpu=True,
                         include_num_input_tokens_seen="non_padding", disable_tqdm=True)
trainer = Trainer(model=model, args=args, train_dataset=rows,
                  data_collator=DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100))
out = trainer.train()
print(json.dumps({"tokens": trainer.state.num_input_tokens_seen, "seconds": out.metrics["train_runtime"]}))
'''


def _child(argv: list[str], timeout: float, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run one measurement alone; (process, wall seconds, peak RSS MiB of that process alone)."""
    import threading

    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    streams = {"out": "", "err": ""}
    readers = [threading.Thread(target=lambda k=k, f=f: streams.__setitem__(k, f.read()), daemon=True)
               for k, f in (("out", proc.stdout), ("err", proc.stderr))]
    for reader in readers:
        reader.start()
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    _, status, usage = os.wait4(proc.pid, 0)  # reaps it ourselves: its own rusage, not all children's
    killer.cancel()
    for reader in readers:
        reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    return (subprocess.CompletedProcess(argv, proc.returncode, streams["out"], streams["err"]), wall,
            usage.ru_maxrss / 1024)


def unitune_run(name: str, model_dir: Path, data_file: Path, work: Path, size: dict, *flags: str) -> dict:
    out = work / name
    argv = [sys.executable, str(ROOT / "uniform_finetune.py"), "--model_name_or_path", str(model_dir), "--data",
            str(data_file), "--output_dir", str(out), "--lora_target_modules", "q_proj", "v_proj", "--lora_r", "8",
            "--per_gpu_train_batch_size", str(size["batch"]), "--cutoff_len", str(size["cutoff"]),
            "--max_steps", str(size["steps"]), "--eval_base", "false", "--cache_dir", str(work / f"cache-{name}"),
            "--logging_steps", "1000", *flags]
    proc, wall, rss = _child(argv, timeout=3600)
    if proc.returncode != 0:
        return {"status": "failed", "error": proc.stderr.strip().splitlines()[-1:] or ["?"]}
    final = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()][-1]
    return {"status": "ok", "tokens": final["num_input_tokens_seen"], "seconds": final["train_runtime"],
            "wall_seconds": wall, "peak_rss_mb": rss}


def script_run(code: str, args: list[str]) -> dict:
    proc, wall, rss = _child([sys.executable, "-c", code, *args], timeout=3600)
    if proc.returncode != 0:
        return {"status": "failed", "error": proc.stderr.strip().splitlines()[-1:] or ["?"]}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1]), "wall_seconds": wall,
            "peak_rss_mb": rss}


def llamafactory_runs(model_dir: Path, data_file: Path, work: Path, size: dict, tokens_per_epoch: int) -> dict:
    import yaml

    venv = ROOT / ".peers" / "llamafactory"
    setup = subprocess.run(["bash", str(PEERS), str(venv)], capture_output=True, text=True, timeout=1800)
    if setup.returncode != 0:
        reason = (setup.stderr.strip().splitlines() or ["install failed"])[-1]
        return {n: {"status": "skipped", "error": reason} for n in ("llamafactory_default",
                                                                    "llamafactory_neat_packing_bf16")}
    (work / "lf_data").mkdir(exist_ok=True)
    (work / "lf_data" / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": str(data_file)}}))
    results = {}
    for name, extra in (("llamafactory_default", {}),
                        ("llamafactory_neat_packing_bf16", {"packing": True, "neat_packing": True, "bf16": True,
                                                            "use_cpu": True})):
        config = {"model_name_or_path": str(model_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
                  "lora_target": "q_proj,v_proj", "lora_rank": 8, "dataset": "bench",
                  "dataset_dir": str(work / "lf_data"), "template": "alpaca", "cutoff_len": size["cutoff"],
                  "output_dir": str(work / name), "per_device_train_batch_size": size["batch"],
                  "learning_rate": 1.0e-4, "num_train_epochs": 1, "report_to": "none", "overwrite_output_dir": True,
                  **extra}
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        proc, wall, rss = _child([str(venv / "bin" / "llamafactory-cli"), "train", str(path)], timeout=3600,
                                 env={"DISABLE_VERSION_CHECK": "1"})
        metrics = work / name / "train_results.json"
        if proc.returncode != 0 or not metrics.is_file():
            results[name] = {"status": "failed", "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
            continue
        seconds = json.loads(metrics.read_text())["train_runtime"]
        # one epoch over the same records: the same non-padding tokens as unitune's encoding of them
        results[name] = {"status": "ok", "tokens": tokens_per_epoch, "seconds": seconds, "wall_seconds": wall,
                         "peak_rss_mb": rss}
    return results


def tokens_per_epoch(model_dir: Path, data_file: Path, cutoff: int) -> tuple[int, float]:
    """Non-padding tokens of one epoch under unitune's encoding, and the mean example length."""
    from transformers import AutoTokenizer

    from unitune import data as D
    from unitune.templates import get_template

    tok = AutoTokenizer.from_pretrained(model_dir)
    examples = [e for r in D.load_file(data_file) if (e := D.encode(tok, get_template("alpaca"), r, cutoff, False))]
    total = sum(len(e["input_ids"]) for e in examples)
    return total, total / max(len(examples), 1)


# ---------------------------------------------------------------- report
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps (CI)")
    parser.add_argument("--peers", action="store_true", help="also LLaMA-Factory via ../shared/peers")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_speed.json"))
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    import tempfile

    import torch

    size = QUICK if args.quick else FULL
    work = Path(args.work or tempfile.mkdtemp(prefix="unitune-train-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir, data_file = build_workload(work, size)
    epoch_tokens, mean_len = tokens_per_epoch(model_dir, data_file, size["cutoff"])
    from unitune.loader import cpu_has_native_bf16

    bf16_ok = cpu_has_native_bf16()  # the rule unitune's --compute_dtype auto follows on a CPU
    dtypes = ["fp32", "bf16"] if bf16_ok else ["fp32"]
    peaks = {d: matmul_peak(d) for d in dtypes}
    common = [str(model_dir), str(data_file)]
    runs: dict[str, dict] = {}
    for d in dtypes:
        runs[f"ceiling_{d}"] = script_run(CEILING, [*common, d, str(size["steps"]), str(size["batch"]),
                                                    str(size["cutoff"])])
    runs["alpaca_cot_baseline"] = script_run(BASELINE, [*common, str(work / "baseline"), str(size["steps"]),
                                                        str(size["batch"]), str(size["cutoff"])])
    # name -> (flags, dtype it computes in, packed rows or not)
    unitune = {"unitune_default": ((), dtypes[-1], True),  # no flags: packing and, where native, bf16
               "unitune_unpacked_fp32": (("--packing", "false", "--compute_dtype", "fp32"), "fp32", False)}
    if bf16_ok:
        unitune["unitune_packed_fp32"] = (("--compute_dtype", "fp32"), "fp32", True)
    for name, (flags, dtype, packed) in unitune.items():
        runs[name] = {**unitune_run(name, model_dir, data_file, work, size, *flags), "dtype": dtype, "packed": packed}
    for d in dtypes:
        runs[f"ceiling_{d}"].update(dtype=d, packed=True)
    runs["alpaca_cot_baseline"].update(dtype="fp32", packed=False)
    if args.peers:
        lf = llamafactory_runs(model_dir, data_file, work, size, epoch_tokens)
        lf["llamafactory_default"].update(dtype="fp32", packed=False)
        lf["llamafactory_neat_packing_bf16"].update(dtype="bf16", packed=True)
        runs.update(lf)
    flops = {True: model_flops_per_token(model_dir, size["cutoff"] / 2),
             False: model_flops_per_token(model_dir, mean_len / 2)}
    for name, run in runs.items():
        if run.get("status") != "ok":
            continue
        run["tokens_per_second"] = run["tokens"] / run["seconds"]
        dtype = run["dtype"] if run["dtype"] in peaks else "fp32"
        per_token = flops[run["packed"]]
        run["mfu"] = run["tokens_per_second"] * per_token / peaks[dtype]
        ceiling = runs.get(f"ceiling_{dtype}", {}).get("tokens_per_second")
        run["of_ceiling"] = run["tokens_per_second"] / ceiling if ceiling else None
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                          "matmul_peak_flops": peaks},
              "workload": {**size, "data": str(data_file if not SHARED_DATA.is_file() else SHARED_DATA),
                           "mean_example_tokens": mean_len},
              "command": "python bench/train_speed.py" + (" --quick" if args.quick else "")
                         + (" --peers" if args.peers else ""),
              "runs": runs, "ratios": ratios(runs)}
    from unitune.writable import write_atomic

    write_atomic(Path(args.out), json.dumps(result, indent=2))
    print(table(result))
    for name, value in result["ratios"].items():
        print(f"{name}: {value:.2f}")
    return result


def ratios(runs: dict) -> dict:
    """The issue's targets, as ratios of this one run: unitune's default against each reference."""
    speed = {name: run["tokens_per_second"] for name, run in runs.items() if run.get("status") == "ok"}
    default = speed.get("unitune_default")
    out = {}
    if default:
        for reference in ("alpaca_cot_baseline", "llamafactory_default", "llamafactory_neat_packing_bf16"):
            if speed.get(reference):
                out[f"unitune_default / {reference}"] = default / speed[reference]
        out["unitune_default of its ceiling"] = runs["unitune_default"].get("of_ceiling") or 0.0
    return out


def table(result: dict) -> str:
    lines = ["| run | non-pad tokens/s | of ceiling | MFU | train s | wall s | peak RSS MiB | status |",
             "|---|---|---|---|---|---|---|---|"]
    for name, run in result["runs"].items():
        if run.get("status") != "ok":
            lines.append(f"| {name} | | | | | | | {run.get('status')}: {run.get('error')} |")
            continue
        of = f"{100 * run['of_ceiling']:.0f} %" if run.get("of_ceiling") else ""
        lines.append(f"| {name} | {run['tokens_per_second']:.0f} | {of} | {100 * run['mfu']:.1f} % | "
                     f"{run['seconds']:.1f} | {run['wall_seconds']:.1f} | {run['peak_rss_mb']:.0f} | ok |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
