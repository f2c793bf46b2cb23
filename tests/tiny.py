"""Tiny offline models for tests: a byte-level BPE tokenizer and random models of each family."""

from __future__ import annotations

from pathlib import Path

CORPUS = ["Below is an instruction that describes a task. Write a response that appropriately completes the request.",
          "### Instruction:\nAdd the numbers.\n\n### Input:\n3 4\n\n### Response:\n3 + 4 = 7. Answer: 7",
          "以下是描述任务的指令。请编写一个恰当完成该请求的回答。答案：七", "The quick brown fox jumps over the lazy dog."]


def build_tokenizer(out: Path, vocab_size: int = 400):
    """A byte-level BPE tokenizer with <s> </s> <pad> <unk>, saved so AutoTokenizer loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(out)
    return fast
