#!/usr/bin/env python3
"""Every registered PEFT method, fine-tuned the same way on one model and data: the shape of Alpaca-CoT's Table 4.

    python bench/compare_methods.py                          # all methods, embedded default model and data
    python bench/compare_methods.py --methods lora adapter_h --max_steps 20
    python bench/compare_methods.py --max_steps 10 --model_name_or_path /tmp/tiny-llama --data my.jsonl
    python bench/compare_methods.py --per_method "full=--learning_rate 1e-3" "prompt=--num_virtual_tokens 8"

Flags this command does not know are passed to every fine-tune run (uniform_finetune.py's flags);
--per_method adds flags for one method only, after those. Each
method runs the real fine-tune (unitune.train.run) in its own process, so peak memory is per method. Writes
into --out: compare.md (the table), compare.json (everything measured), loss_curves.png (all training
losses on one plot) and runs/<method>/ (each run's adapter dir, loss_log.jsonl, results.json, run.log).
A method that fails is recorded with its error line, and the command then exits 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Alpaca-CoT's Table 4 order first; methods registered later follow in name order
ORDER = ["lora", "qlora", "adalora", "dora", "rslora", "ia3", "prompt", "p_tuning", "prefix", "adapter_h",
         "adapter_p", "adapter_parallel", "freeze", "full"]
CHILD_FLAG = "--_child_report"  # internal: run one fine-tune in this process and report its peak memory


def registered_methods() -> list[str]:
    from unitune.methods import METHODS, _ensure_loaded

    _ensure_loaded()
    names = {m.name for m in METHODS.values()}  # aliases point at the same Method
    return [n for n in ORDER if n in names] + sorted(names - set(ORDER))


def child(report: str, argv: list[str]) -> int:
    """One fine-tune run; its outcome and this process's peak memory go to `report` (JSON)."""
    import resource
    import traceback

    from unitune.errors import UnituneError

    outcome: dict = {"ok": False}
    try:
        from unitune.train import run

        run(argv)
        outcome["ok"] = True
    except UnituneError as err:
        outcome["error"] = str(err)
    except Exception as err:  # noqa: BLE001 - a crash of one method is recorded, the comparison goes on
        traceback.print_exc()
        outcome["error"] = f"{type(err).__name__}: {err}".splitlines()[0]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    outcome["peak_rss_mb"] = rss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        outcome["peak_gpu_mb"] = sys.modules["torch"].cuda.max_memory_allocated() / 2**20
    Path(report).write_text(json.dumps(outcome))
    return 0 if outcome["ok"] else 1


def run_method(method: str, run_dir: Path, common: list[str], timeout: float) -> dict:
    """Fine-tune with `method` in a fresh process; collect results.json, the loss log and measurements."""
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a stale adapter or checkpoint of an earlier comparison must not be reused
    run_dir.mkdir(parents=True)
    report = run_dir / "bench_report.json"
    argv = ["--peft_type", method, "--output_dir", str(run_dir), *common]
    row: dict = {"method": method, "argv": argv}
    started = time.time()
    with open(run_dir / "run.log", "w") as log:
        try:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, str(report), *argv],
                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    row["wall_seconds"] = round(time.time() - started, 2)
    outcome = json.loads(report.read_text()) if report.is_file() else {}
    row["peak_rss_mb"] = outcome.get("peak_rss_mb")
    if "peak_gpu_mb" in outcome:
        row["peak_gpu_mb"] = outcome["peak_gpu_mb"]
    results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").is_file() else {}
    row.update({k: results.get(k) for k in ("trainable_parameters", "final_loss", "base_accuracy",
                                            "tuned_accuracy", "train_seconds")})
    row["learning_rate"] = resolved_flag(run_dir / "unitune_config.yaml", "learning_rate")
    row["loss_curve"] = read_losses(run_dir / "loss_log.jsonl")
    tail = [loss for _, loss in row["loss_curve"][-10:]]  # one batch's loss is noisy; the table shows this mean
    row["tail_loss"] = sum(tail) / len(tail) if tail else None
    if code == 0 and outcome.get("ok") and _finite(row["final_loss"]):
        row["status"] = "ok"
    elif code == 0 and outcome.get("ok"):
        row["status"], row["error"] = "failed", f"no finite training loss ({row['final_loss']})"
    else:
        row["status"], row["exit_status"] = "failed", code
        if code is None:
            row["error"] = f"timed out after {timeout:.0f} s"
        elif code < 0:  # no report: the process died from a signal (killed, out of memory, segfault)
            row["error"] = f"killed by signal {-code}"
        else:
            row["error"] = outcome.get("error") or last_line(run_dir / "run.log") or f"exit status {code}"
    for checkpoint in run_dir.glob("checkpoint-*"):  # full optimizer states: only resuming needs them
        shutil.rmtree(checkpoint, ignore_errors=True)
    return row


def read_losses(path: Path) -> list[list[float]]:
    if not path.is_file():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [[e["step"], e["loss"]] for e in entries if "loss" in e and "step" in e]


def resolved_flag(config: Path, name: str):
    """A flag's value as the run resolved it (preset, config, command line), from its unitune_config.yaml."""
    if not config.is_file():
        return None
    from unitune.args import load_yaml

    return load_yaml(str(config)).get(name)


def last_line(path: Path) -> str:
    """The log's last line that is not a progress bar: usually the exception of a crash."""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()
             if ln.strip() and "it/s]" not in ln and "step/s" not in ln]
    return lines[-1] if lines else ""


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def markdown(rows: list[dict], settings: dict) -> str:
    accuracy = any(r.get("tuned_accuracy") is not None for r in rows)
    per_method = "; ".join(f"{m}: {' '.join(flags)}" for m, flags in settings.get("per_method", {}).items())
    head = ["method", "trainable params", "learning rate", "train loss (last 10 steps)"]
    head += ["held-out exact match"] if accuracy else []
    head += ["train s", "wall s", "peak RSS MiB", "status"]
    lines = [f"Fine-tune of every PEFT method: {settings['max_steps']} steps each on {settings['model']} "
             f"with {settings['data']} ({settings['cpus']} CPUs{', ' + settings['gpu'] if settings['gpu'] else ''}).",
             *([f"Flags for one method only: {per_method}."] if per_method else []),
             *([f"Held-out exact match of the untuned base: {_percent(settings['base_accuracy'])}."]
               if accuracy and settings["base_accuracy"] is not None else []),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], _num(r.get("trainable_parameters"), ","), _num(r.get("learning_rate"), ".0e"),
                 _num(r.get("tail_loss"), ".4f")]
        if accuracy:
            cells.append(_percent(r.get("tuned_accuracy")))
        cells += [_num(r.get("train_seconds"), ".1f"), _num(r.get("wall_seconds"), ".1f"),
                  _num(r.get("peak_rss_mb"), ".0f"),
                  "ok" if r["status"] == "ok" else "failed: " + r.get("error", "").replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.get_cmap("tab20").colors  # 14+ methods: the default 10-color cycle would repeat
    for i, r in enumerate(rows):
        if r["loss_curve"]:
            steps, losses = zip(*r["loss_curve"])
            ax.plot(steps, losses, label=r["method"], color=colors[(2 * i) % 20 + (i // 10) % 2],
                    linestyle=("-", "--", ":")[i % 3], marker="." if len(steps) < 20 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("training loss by PEFT method")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="bench/compare_methods.py", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False,
                                     epilog="Other flags go to every fine-tune run (see uniform_finetune.py --help).")
    parser.add_argument("--methods", nargs="+", help="methods to compare (default: every registered one)")
    parser.add_argument("--max_steps", type=int, default=60, help="optimizer steps per method (default: 60)")
    parser.add_argument("--eval_samples", type=int, default=64,
                        help="held-out records scored per run (default: 64; the base is scored once)")
    parser.add_argument("--eval_max_new_tokens", type=int, default=64,
                        help="most tokens per held-out answer (default: 64; unitune-synth answers are shorter)")
    parser.add_argument("--per_method", nargs="+", default=[], metavar="METHOD=FLAGS",
                        help='flags for one method only, e.g. "full=--learning_rate 1e-3" (repeatable)')
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "compare"), help="output folder")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per method (default: 600)")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CHILD_FLAG]:
        return child(argv[1], argv[2:])
    args, passthrough = parse(argv)
    known = registered_methods()
    methods = args.methods or known
    unknown = [m for m in methods if m not in known]
    if unknown:
        print(f"error: unknown method {' '.join(unknown)}; registered: {' '.join(known)}", file=sys.stderr)
        return 2
    try:
        per_method = per_method_flags(args.per_method, known)
    except ValueError as err:
        print(f"error: --per_method {err}", file=sys.stderr)
        return 2
    if args.max_steps < 1:
        print("error: --max_steps must be at least 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # one checkpoint per run at most (--save_steps = all steps); user flags come last and win
    common = ["--max_steps", str(args.max_steps), "--save_steps", str(args.max_steps),
              "--eval_samples", str(args.eval_samples), "--eval_max_new_tokens", str(args.eval_max_new_tokens)]
    settings = {"methods": methods, "max_steps": args.max_steps, "passthrough": passthrough,
                "per_method": per_method,
                "model": _flag(passthrough, "--model_name_or_path", "--base_model") or "models/unitune-tiny",
                "data": " ".join(_flags(passthrough, "--data", "--dataset", "--data_path") or ["unitune-synth"]),
                "cpus": os.cpu_count(), "gpu": _gpu_name(), "python": platform.python_version(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    rows = []
    for i, method in enumerate(methods, 1):
        print(f"[{i}/{len(methods)}] {method} ...", end=" ", flush=True, file=sys.stderr)
        # the base is the same for every method: the first successful run scores it, the others skip it
        base_known = any(r.get("base_accuracy") is not None for r in rows)
        flags = [*common, "--eval_base", str(not base_known).lower(), *passthrough, *per_method.get(method, [])]
        row = run_method(method, out / "runs" / method, flags, args.timeout)
        rows.append(row)
        print(f"{row['status']} in {row['wall_seconds']:.0f} s" + (f": {row['error']}" if "error" in row else ""),
              file=sys.stderr)
    settings["base_accuracy"] = next((r["base_accuracy"] for r in rows if r.get("base_accuracy") is not None), None)
    (out / "compare.json").write_text(json.dumps({"settings": settings, "runs": rows}, indent=2))
    table = markdown(rows, settings)
    (out / "compare.md").write_text(table)
    plot(rows, out / "loss_curves.png")
    print(table)
    print(f"wrote {out / 'compare.md'}, {out / 'compare.json'} and {out / 'loss_curves.png'}")
    failed = [r["method"] for r in rows if r["status"] != "ok"]
    if failed:
        print(f"error: {len(failed)} of {len(rows)} methods failed: {' '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def per_method_flags(specs: list[str], known: list[str]) -> dict[str, list[str]]:
    """"METHOD=FLAGS" strings -> {method: [flag tokens]}; a method given twice gets both strings' flags."""
    import shlex

    flags: dict[str, list[str]] = {}
    for spec in specs:
        method, sep, rest = spec.partition("=")
        if not sep or not rest.strip():
            raise ValueError(f"{spec!r}: expected METHOD=FLAGS, e.g. \"full=--learning_rate 1e-3\"")
        if method not in known:
            raise ValueError(f"{spec!r}: unknown method {method}; registered: {' '.join(known)}")
        flags.setdefault(method, []).extend(shlex.split(rest))
    return flags


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _flags(argv: list[str], *names: str) -> list[str]:
    """The values after the last of `names` in argv (for the table's caption only)."""
    values: list[str] = []
    for i, token in enumerate(argv):
        if token in names:
            values = []
            for value in argv[i + 1:]:
                if value.startswith("--"):
                    break
                values.append(value)
        elif "=" in token and token.split("=", 1)[0] in names:
            values = [token.split("=", 1)[1]]
    return values


def _flag(argv: list[str], *names: str) -> str | None:
    values = _flags(argv, *names)
    return values[0] if values else None


def _gpu_name() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


if __name__ == "__main__":
    sys.exit(main())
