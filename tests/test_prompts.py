"""One encoding: training ids up to a response are the inference prompt's ids, and each family's template gives the
prompt its checkpoint's own prompt-building code gives (MOSS ships none; see the README)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("torch")

from tests.tiny import real_fixture  # noqa: E402
from unitune import data as D  # noqa: E402
from unitune.args import ModelArgs  # noqa: E402
from unitune.families import remote_class  # noqa: E402
from unitune.templates import get_template, template_names  # noqa: E402

HISTORY = [["What is 1 + 1?", "It is 2."], ["And 2 + 3?", "That makes 5."]]
LAST = ("Now 4 + 4?", "Eight.")


def _record(history=HISTORY, last=LAST, system=None) -> dict:
    return {"system": system, "history": [list(turn) for turn in history], "instruction": last[0], "input": "",
            "output": last[1]}


def _check_inference_is_a_prefix_of_training(tokenizer, template):
    record = _record()
    trained = D.encode(tokenizer, template, record, cutoff_len=4096, train_on_inputs=False)
    prompt = template.prompt_for(record["instruction"], "", record["history"], None)
    inference = tokenizer.encode(prompt, add_special_tokens=True)  # what generation feeds the model
    n = len(inference)
    assert trained["input_ids"][:n] == inference, template.name
    # everything after the prompt is the last response, trained; the turn ends exactly once
    assert all(label != -100 for label in trained["labels"][n:]) and trained["labels"][n - 1] == -100
    answer_ids = trained["input_ids"][n:]
    answer = tokenizer.decode(answer_ids, skip_special_tokens=False)
    assert LAST[1] in answer, (template.name, answer)
    eos = tokenizer.eos_token_id
    if template.ends_turns_itself():  # the template's own end of turn, once, and no eos of ours after it
        end = template.response_suffix.strip() or tokenizer.eos_token
        assert answer.count(end) == 1, (template.name, answer)
        assert answer_ids.count(eos) == (1 if end == tokenizer.eos_token else 0), (template.name, answer)
    else:
        assert answer_ids[-1] == eos and answer_ids.count(eos) == 1, (template.name, answer)


@pytest.mark.parametrize("name", template_names())
def test_every_template_encodes_inference_as_training(name, tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("llama"))
    _check_inference_is_a_prefix_of_training(tokenizer, get_template(name))


def test_chatml_with_im_end_as_eos_never_doubles_it(tiny_model, tmp_path):
    """A ChatML tokenizer whose eos is <|im_end|>: every trained turn ends `<|im_end|>\\n`, never twice."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("llama"))
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "additional_special_tokens": ["<|im_start|>"]})
    template = get_template("chatml")
    trained = D.encode(tokenizer, template, _record(), 4096, False)["input_ids"]
    eos = tokenizer.eos_token_id
    assert not any(a == b == eos for a, b in zip(trained, trained[1:]))
    assert trained.count(eos) == 1 + 2 * (len(HISTORY) + 1)  # ends the system turn and every user / assistant turn
    _check_inference_is_a_prefix_of_training(tokenizer, template)


# ---------------------------------------------------------------- each family's own prompt-building code
def _loaded(family: str):
    from unitune.loader import load_tokenizer
    from unitune.models import get_model_spec
    from unitune.templates import get_template as template

    spec = get_model_spec(family)
    args = ModelArgs(model_type=family, model_name_or_path=str(real_fixture(family)), trust_remote_code=True)
    return load_tokenizer(args, spec, padding_side="left"), template(spec.template)


@pytest.mark.parametrize("family", ["chatglm", "baichuan2", "internlm2", "moss"])
def test_real_tokenizers_encode_inference_as_training(family):
    tokenizer, template = _loaded(family)
    _check_inference_is_a_prefix_of_training(tokenizer, template)


def _ours(tokenizer, template, history, query) -> list[int]:
    return tokenizer.encode(template.prompt_for(query, "", history, None), add_special_tokens=True)


def test_chatglm2_prompt_is_its_build_inputs():
    tokenizer, template = _loaded("chatglm")
    path = str(real_fixture("chatglm"))
    model_cls = remote_class(path, "modeling_chatglm.ChatGLMForConditionalGeneration")
    history = [tuple(turn) for turn in HISTORY[:1]]
    theirs = model_cls.build_inputs(SimpleNamespace(device="cpu"), tokenizer, LAST[0], history=history)
    assert _ours(tokenizer, template, HISTORY[:1], LAST[0]) == theirs["input_ids"][0].tolist()


def test_baichuan2_prompt_is_its_build_chat_input():
    import json

    tokenizer, template = _loaded("baichuan2")
    path = real_fixture("baichuan2")
    build_chat_input = remote_class(str(path), "generation_utils.build_chat_input")
    generation = SimpleNamespace(**json.loads((path / "generation_config.json").read_text()))
    model = SimpleNamespace(generation_config=generation, config=SimpleNamespace(model_max_length=4096), device="cpu")
    messages = [{"role": "user", "content": HISTORY[0][0]}, {"role": "assistant", "content": HISTORY[0][1]},
                {"role": "user", "content": LAST[0]}]
    theirs = build_chat_input(model, tokenizer, messages)[0].tolist()
    assert _ours(tokenizer, template, HISTORY[:1], LAST[0]) == theirs


def test_internlm2_prompt_is_its_build_inputs():
    tokenizer, template = _loaded("internlm2")
    path = str(real_fixture("internlm2"))
    model_cls = remote_class(path, "modeling_internlm2.InternLM2ForCausalLM") if _has_einops() else None
    if model_cls is None:
        pytest.skip("InternLM2's modeling file (which holds build_inputs) imports einops")
    history = [tuple(turn) for turn in HISTORY[:1]]
    theirs = model_cls.build_inputs(None, tokenizer, LAST[0], history=history)["input_ids"][0].tolist()
    assert _ours(tokenizer, template, HISTORY[:1], LAST[0]) == theirs


def _has_einops() -> bool:
    import importlib.util

    return importlib.util.find_spec("einops") is not None


# ---------------------------------------------------------------- the tokenizer's own chat template
def _chatml_tokenizer(tiny_model):
    """The tiny tokenizer dressed as a ChatML chat model: eos <|im_end|>, a Jinja chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("llama"))
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
                               "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
                               "{{ '<|im_start|>assistant\\n' }}{% endif %}")
    return tokenizer


def test_hf_template_trains_and_prompts_with_the_tokenizers_own_template(tiny_model):
    from unitune.chat_templates import resolve

    tokenizer = _chatml_tokenizer(tiny_model)
    template = resolve("hf", "alpaca", tokenizer)
    assert template.stop == () and template.ends_turns_itself()  # <|im_end|> is eos: generation stops there
    _check_inference_is_a_prefix_of_training(tokenizer, template)
    messages = [{"role": "user", "content": q if i % 2 == 0 else a} for turn in HISTORY for i, (q, a) in
                enumerate([turn, turn])]
    messages = [{"role": ("user", "assistant")[i % 2], "content": m["content"]} for i, m in enumerate(messages)]
    messages.append({"role": "user", "content": LAST[0]})
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert template.prompt_for(LAST[0], history=HISTORY) == expected
    trained = D.encode(tokenizer, template, _record(), 4096, False)
    trained_text = [tokenizer.decode([t]) for t, label in zip(trained["input_ids"], trained["labels"]) if label != -100]
    assert "".join(trained_text) == "It is 2.<|im_end|>\nThat makes 5.<|im_end|>\nEight.<|im_end|>\n"


def test_default_template_of_auto_is_the_tokenizers_and_a_named_one_that_differs_warns(tiny_model, caplog):
    import logging

    from unitune import chat_templates
    from unitune.models import get_model_spec

    tokenizer = _chatml_tokenizer(tiny_model)
    assert chat_templates.resolve(None, get_model_spec("auto").template, tokenizer).name == "hf"
    chat_templates._warned.clear()
    with caplog.at_level(logging.WARNING, logger="unitune.chat_templates"):
        assert chat_templates.resolve(None, "alpaca", tokenizer).name == "alpaca"  # the model type's, as asked
        chat_templates.resolve(None, "alpaca", tokenizer)
    warnings = [r.getMessage() for r in caplog.records if "prompt differently" in r.getMessage()]
    assert len(warnings) == 1 and "first difference at character 0" in warnings[0] and "--template hf" in warnings[0]


@pytest.mark.parametrize("name", template_names())
def test_every_template_as_jinja_renders_its_own_prompt(name, tiny_model):
    """What merge writes as the merged tokenizer's chat_template prompts exactly as the template does."""
    from transformers import AutoTokenizer

    from unitune.chat_templates import to_jinja

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("llama"))
    template = get_template(name)
    tokenizer.chat_template = to_jinja(template, tokenizer)
    messages = [{"role": "system", "content": "Be brief."}]
    for q, a in HISTORY:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": LAST[0]})
    bos = tokenizer.bos_token if tokenizer.encode("a")[:1] == [tokenizer.bos_token_id] else ""
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == bos + template.prompt_for(LAST[0], history=HISTORY, system="Be brief.")
    default_system = tokenizer.apply_chat_template(messages[1:], tokenize=False, add_generation_prompt=True)
    assert default_system == bos + template.prompt_for(LAST[0], history=HISTORY)


# ---------------------------------------------------------------- families whose prompt code is not in a fixture
# Their checkpoints' own chat templates (tokenizer_config.json chat_template), quoted as the test reference:
# GLM-4-9B-Chat's without its tools branch (THUDM/glm-4-9b-chat; the same text as its tokenization_chatglm.py
# build_chat_input: <|role|> + "\n" + message, the prompt ending at <|assistant|>), ChatGLM3-6B's whole
# (THUDM/chatglm3-6b; both also quoted in llama.cpp's tests/test-chat-template.cpp).
PUBLISHED = {
    "glm4": ("[gMASK]<sop>{% for item in messages %}{% if item['content'] %}<|{{ item['role'] }}|>{{ item['metadata'] }}"
             "\n{{ item['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
             "[gMASK]<sop>"),
    "chatglm3": ("{% for message in messages %}{% if loop.first %}[gMASK]sop<|{{ message['role'] }}|>\n "
                 "{{ message['content'] }}{% else %}<|{{ message['role'] }}|>\n {{ message['content'] }}{% endif %}"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}", "[gMASK]sop"),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_template_is_the_checkpoints_own_chat_template(name, tiny_model):
    """[gMASK] and sop are the tokenizer's own prefix (build_inputs_with_special_tokens), not template text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("llama"))
    tokenizer.chat_template, prefix = PUBLISHED[name]
    template = get_template(name)
    for system in (None, "Be brief."):
        messages = [{"role": "system", "content": system}] if system else []
        for q, a in HISTORY:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": LAST[0]})
        theirs = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert prefix + template.prompt_for(LAST[0], history=HISTORY, system=system or "") == theirs
    # the trained response is what the model writes after <|assistant|>: "\n" (ChatGLM3: "\n ") and the answer
    *_, (_prompt, response) = template.segments(LAST[0], output=LAST[1], history=HISTORY)
    messages.append({"role": "assistant", "content": LAST[1]})
    whole = tokenizer.apply_chat_template(messages, tokenize=False)
    assert whole == theirs + response


def test_baichuan_v1_prompt_is_build_chat_input_with_its_role_tokens():
    """Baichuan-13B-Chat builds prompts with the same generation_utils.build_chat_input as Baichuan2 (the fixture's
    file), with its generation_config user/assistant ids 195 / 196, which are <reserved_102> / <reserved_103> in its
    vocabulary (Baichuan2's 195 / 196 are <reserved_106> / <reserved_107>). The fixture's tokenizer has no
    <reserved_102>, so the v1 template is checked on it with those two pieces registered as its role tokens."""
    import json

    from unitune.families import load_tokenizer

    path = real_fixture("baichuan2")
    tokenizer = load_tokenizer("baichuan", str(path))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<reserved_102>", "<reserved_103>"]})
    user, assistant = tokenizer.convert_tokens_to_ids(["<reserved_102>", "<reserved_103>"])
    build_chat_input = remote_class(str(path), "generation_utils.build_chat_input")
    generation = SimpleNamespace(**{**json.loads((path / "generation_config.json").read_text()),
                                    "user_token_id": user, "assistant_token_id": assistant})
    model = SimpleNamespace(generation_config=generation, config=SimpleNamespace(model_max_length=4096), device="cpu")
    messages = [{"role": "user", "content": HISTORY[0][0]}, {"role": "assistant", "content": HISTORY[0][1]},
                {"role": "user", "content": LAST[0]}]
    theirs = build_chat_input(model, tokenizer, messages)[0].tolist()
    assert _ours(tokenizer, get_template("baichuan"), HISTORY[:1], LAST[0]) == theirs
