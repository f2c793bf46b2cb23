"""The named library work-arounds in unitune/compat.py do what they say, on the installed versions."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4)).eval()


@pytest.mark.parametrize("kind", ["prefix", "p_tuning", "prompt"])
def test_prompt_learning_generate_matches_a_full_forward_greedy_loop(kind):
    """Cached generate() of a prompt-learning model equals greedy decoding by full forward passes (the peft
    model injects its prompt on every full pass), and differs from the untuned base."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

    from unitune.compat import fix_prompt_learning_generation

    config = {"prefix": PrefixTuningConfig, "p_tuning": PromptEncoderConfig, "prompt": PromptTuningConfig}[kind]
    model = get_peft_model(_tiny_llama(), config(task_type="CAUSAL_LM", num_virtual_tokens=4))
    for param in model.prompt_encoder.parameters():  # a prompt strong enough to change the answer
        torch.nn.init.normal_(param, std=2.0)
    model = fix_prompt_learning_generation(model).eval()
    ids = torch.tensor([[5, 9, 13, 17, 21, 25]])
    cached = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)

    reference = ids
    with torch.no_grad():
        for _ in range(6):
            logits = model(input_ids=reference, attention_mask=torch.ones_like(reference)).logits
            reference = torch.cat([reference, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        with model.disable_adapter():
            base = model.get_base_model().generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                   max_new_tokens=6, do_sample=False)
    assert torch.equal(cached, reference)
    assert not torch.equal(cached, base)
