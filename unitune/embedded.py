"""Build the embedded default: synthetic data, a byte-level BPE tokenizer and a tiny pretrained Llama.

    python -m unitune.embedded                       # data/synth/*.jsonl + models/unitune-tiny/

Steps: (1) generate the instruction data (data/synth) and a plain-text pretraining corpus with
:mod:`unitune.synth`; (2) train a byte-level BPE tokenizer (English + Chinese, digits split one by one,
each Chinese character its own piece) with the `tokenizers` library; (3) pretrain a ~2M-parameter
`LlamaForCausalLM` from scratch on the CPU; (4) save model (safetensors), tokenizer, generation config
and the flags the no-argument fine-tune run uses (unitune_defaults.yaml) into the output folder.

The corpus states the task skills in running prose and never in the instruction layout, so the base
knows the skills but not the Alpaca format; the default LoRA run teaches the format.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

from unitune import synth
from unitune.paths import asset_dir, asset_root

log = logging.getLogger(__name__)

ROOT = asset_root()  # a checkout's root: the build writes the shipped model and data there
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]

# The tiny model: about 2.2M parameters, 8.7 MB in fp32.
MODEL_CONFIG = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=6,
                    num_key_value_heads=6, max_position_embeddings=512, rms_norm_eps=1e-5,
                    tie_word_embeddings=True, hidden_act="silu")

# Flags of the no-argument `python uniform_finetune.py` on this model (written as unitune_defaults.yaml).
FINETUNE_DEFAULTS = {
    "peft_type": "lora",  # tuned for this method: these values win over peft/lora.yaml, not over other presets
    "learning_rate": 4.0e-3,
    "epochs": 1,  # max_steps wins: 600 steps of 16 are 2.4 passes over the 4,000 default records
    "max_steps": 600,  # about 2.5 minutes on 2 idle CPU cores
    "per_gpu_train_batch_size": 16,
    "gradient_accumulation_steps": 1,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.05,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "cutoff_len": 128,  # the longest default record is 112 tokens; it also bounds generation in the report
}


def train_tokenizer(texts, vocab_size: int):
    """A byte-level BPE `tokenizers.Tokenizer`: digits split one by one, one piece per Chinese character."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[\u3400-\u9fff\uf900-\ufaff]"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r" ?[0-9]"), behavior="isolated"),  # one digit a token, space attached
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return tok


def template_texts() -> list[str]:
    """The fixed strings of templates/*.json (system prompts, turn markers)."""
    texts = []
    for path in sorted(asset_dir("templates").glob("*.json")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        texts += [v for k, v in sorted(raw.items()) if isinstance(v, str) and k not in ("name", "description")]
    return texts


def wrap_tokenizer(tok):
    """The `tokenizers` object as a transformers fast tokenizer with bos/eos/pad/unk set."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side="left", model_max_length=512,
                                   clean_up_tokenization_spaces=False)


def pack(docs: list[str], tokenizer, seq_len: int):
    """Token ids of `<s> doc </s>` documents, concatenated and cut into rows of `seq_len`."""
    import torch

    ids: list[int] = []
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids += [tokenizer.bos_token_id, *enc, tokenizer.eos_token_id]
    rows = len(ids) // seq_len
    return torch.tensor(ids[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


def pretrain(model, data, steps: int, batch_size: int, lr: float, seed: int, minutes: float | None = None,
             on_step=None) -> dict:
    """Plain AdamW + warm-up + cosine on packed rows; returns loss and timing stats.

    `on_step(step, model)`, when given, is called after every optimizer step (e.g. to save snapshots).
    """
    import torch
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)

    def lr_at(step: int, total: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    model.train()
    order = torch.randperm(len(data), generator=gen)
    start, losses, cursor, step = time.time(), [], 0, 0
    bar = tqdm(total=steps, desc="pretraining", unit="step", mininterval=5)
    while step < steps:
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(data), generator=gen), 0
        batch = data[order[cursor: cursor + batch_size]]
        cursor += batch_size
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        step += 1
        bar.update(1)
        if step == 20 and minutes:  # fit the schedule to the time budget, measured on the first steps
            per_step = (time.time() - start) / step
            steps = max(step + 1, min(steps, int(minutes * 60 / per_step)))
            bar.total = steps
            log.info("time budget %.1f min: %d steps of %.2fs", minutes, steps, per_step)
        if on_step is not None:
            on_step(step, model)
        if step % 100 == 0:
            log.info("step %d/%d loss %.3f", step, steps, sum(losses[-100:]) / len(losses[-100:]))
    bar.close()
    model.eval()
    return {"steps": step, "seconds": round(time.time() - start, 1),
            "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4)}


def build(out: str | Path = ROOT / "models" / "unitune-tiny", data_out: str | Path = ROOT / "data" / "synth",
          seed: int = 0, steps: int = 1800, batch_size: int = 16, seq_len: int = 256, lr: float = 2e-3,
          vocab_size: int = 2048, n_train: int = 4000, n_test: int = 240, minutes: float | None = None,
          on_step=None) -> dict:
    """Run the four steps; returns a summary (also written to out/build_info.json)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    out, t0 = Path(out), time.time()
    # (1) data
    train, _test, test_keys = synth.write(data_out, seed, n_train, n_test)
    n_docs = steps * batch_size * seq_len // 150 + 1000  # about 190 tokens a document: some rows repeat
    docs = list(synth.pretrain_documents(seed, n_docs, test_keys))
    log.info("pretraining corpus: %d documents", len(docs))
    # (2) tokenizer: learned on the corpus, the training records (never the test records) and the prompt
    # templates, so their words are whole tokens (the model itself never sees the templates in pretraining)
    texts = docs[:8000] + [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in train]
    texts += template_texts() * 200
    tokenizer = wrap_tokenizer(train_tokenizer(texts, vocab_size))
    data = pack(docs, tokenizer, seq_len)
    log.info("packed %d rows of %d tokens (%.1fM tokens; %.1fM used by %d steps)", len(data), seq_len,
             data.numel() / 1e6, steps * batch_size * seq_len / 1e6, steps)
    # (3) model
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **MODEL_CONFIG)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("LlamaForCausalLM with %.2fM parameters", n_params / 1e6)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    stats = pretrain(model, data, steps, batch_size, lr, seed, minutes, on_step)
    # (4) save
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=96)
    model.save_pretrained(out, safe_serialization=True)
    write_defaults(out / "unitune_defaults.yaml")
    info = {"parameters": n_params, "vocab_size": len(tokenizer), "seed": seed, "lr": lr, "batch_size": batch_size,
            "seq_len": seq_len, "pretrain_tokens": stats["steps"] * batch_size * seq_len, **stats,
            "total_seconds": round(time.time() - t0, 1),
            "bytes_on_disk": sum(f.stat().st_size for f in out.iterdir() if f.is_file())}
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    write_card(out / "README.md", info)
    info["bytes_on_disk"] = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    log.info("saved %s", out)
    return info


def write_card(path: Path, info: dict) -> None:
    """A short model card: what this is, how it was made, how to rebuild it."""
    path.write_text(f"""# unitune-tiny

The embedded default base model of unitune: a {info['parameters'] / 1e6:.2f}M-parameter `LlamaForCausalLM`
({MODEL_CONFIG['num_hidden_layers']} layers, hidden size {MODEL_CONFIG['hidden_size']}) with a \
{info['vocab_size']}-token byte-level BPE tokenizer (English + Chinese), pretrained from scratch on the CPU \
for {info['steps']} steps ({info['pretrain_tokens'] / 1e6:.1f}M tokens, final loss {info['final_loss']}) \
on plain text generated by `unitune.synth` (seed {info['seed']}): the synthetic task skills (arithmetic, \
string and list manipulation, triple extraction) worked out in running prose, spelling facts and generic \
sentences. It has never seen an instruction template or an `Answer:` line; `python uniform_finetune.py` \
teaches it that format with LoRA (flags in `unitune_defaults.yaml`).

Made by the project's own command, nothing downloaded:

    python -m unitune.embedded --seed {info['seed']} --steps {info['steps']}

It is a toy for offline demos and tests, not a language model for real use.
""", encoding="utf-8")


def write_defaults(path: Path) -> None:
    """Flat YAML of the fine-tune flags tuned for this model (read by uniform_finetune.py)."""
    lines = ["# Flags of the no-argument `python uniform_finetune.py` on this model; written by",
             "# `python -m unitune.embedded`. Any flag given on the command line or in --config wins."]
    for key, value in FINETUNE_DEFAULTS.items():
        if isinstance(value, list):
            value = "[" + ", ".join(value) + "]"
        elif isinstance(value, float):
            value = f"{value:.1e}" if 0 < value < 0.01 else repr(value)
        lines.append(f"{key}: {value}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m unitune.embedded", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "models" / "unitune-tiny"), help="model folder")
    parser.add_argument("--data_out", default=str(ROOT / "data" / "synth"), help="instruction data folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, tokenizer and weights (default: 0)")
    parser.add_argument("--steps", type=int, default=1800, help="pretraining steps (default: 1800)")
    parser.add_argument("--minutes", type=float, help="fit the pretraining steps into this many minutes")
    parser.add_argument("--batch_size", type=int, default=16, help="rows per step (default: 16)")
    parser.add_argument("--seq_len", type=int, default=256, help="tokens per row (default: 256)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: 2e-3)")
    parser.add_argument("--vocab_size", type=int, default=2048, help="BPE vocabulary (default: 2048)")
    parser.add_argument("--train", type=int, default=4000, help="instruction training records (default: 4000)")
    parser.add_argument("--test", type=int, default=240, help="held-out test records (default: 240)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    info = build(args.out, args.data_out, args.seed, args.steps, args.batch_size, args.seq_len, args.lr,
                 args.vocab_size, args.train, args.test, args.minutes)
    print(f"{args.out}: {info['parameters'] / 1e6:.2f}M parameters, {info['bytes_on_disk'] / 1e6:.2f} MB, "
          f"pretrained {info['steps']} steps in {info['seconds'] / 60:.1f} min (final loss {info['final_loss']})")


if __name__ == "__main__":
    main()
