"""The tokenizer's own Jinja chat template as one more Template (`--template hf`), and the other way round: a
Template written as a Jinja chat_template, so a merged model prompts the way it was trained in any server."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from unitune.errors import UnituneError
from unitune.templates import Template

log = logging.getLogger(__name__)
HF = "hf"
_warned: set = set()


def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer.encode("a", add_special_tokens=True)[:1] == [bos]


@dataclass(frozen=True)
class ChatTemplate(Template):
    """Renders with tokenizer.apply_chat_template. Segments are differences of rendered prefixes (the prompt of
    turn k: everything the conversation up to its user message adds, with the generation prompt), so training
    masks, inference prompts and the template's own end-of-turn text all come from the Jinja template."""

    tokenizer: Any = field(default=None, compare=False, repr=False)

    def ends_turns_itself(self) -> bool:
        return True  # the Jinja template writes each turn's end (<|im_end|>, eos, ...): no eos of ours after it

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        bos = self.tokenizer.bos_token
        if bos and text.startswith(bos) and _adds_bos(self.tokenizer):
            text = text[len(bos):]  # the tokenizer adds it when the front-ends tokenize: never twice
        return text

    def segments(self, instruction: str, input: str = "", output: str | None = None,
                 history: list | None = None, system: str | None = None) -> list[tuple[str, str]]:
        messages = [{"role": "system", "content": system}] if system else []
        turns = [(q, a) for q, a in (history or [])] + [(f"{instruction}\n{input}" if input else instruction, output)]
        out, done = [], ""
        for query, response in turns:
            messages.append({"role": "user", "content": query})
            with_prompt = self._render(messages, True)
            if not with_prompt.startswith(done):
                raise UnituneError("--template hf: the tokenizer's chat template renders a conversation so that an "
                                   "earlier part changes when a turn is added; its prompts cannot be split into turns")
            if response is None:
                out.append((with_prompt[len(done):], None))
                break
            messages.append({"role": "assistant", "content": response})
            full = self._render(messages, False)
            if not full.startswith(with_prompt):
                raise UnituneError("--template hf: the tokenizer's chat template does not render the assistant's "
                                   "turn after the generation prompt; its prompts cannot be split into turns")
            out.append((with_prompt[len(done):], full[len(with_prompt):]))
            done = full
        return out


def from_tokenizer(tokenizer) -> ChatTemplate:
    if not getattr(tokenizer, "chat_template", None):
        raise UnituneError("--template hf: this tokenizer has no chat template (tokenizer_config.json chat_template); "
                           "name a template instead")
    template = ChatTemplate(name=HF, prompt_no_input="", description="the tokenizer's own chat template",
                            tokenizer=tokenizer)
    # the stop text: what the template writes after an assistant message (e.g. <|im_end|>), also a stop string
    marker = "\x00unitune\x00"
    after = template.segments("x", output=marker)[0][1].split(marker, 1)[1].strip()
    stops = (after,) if after and after != tokenizer.eos_token else ()
    return ChatTemplate(name=HF, prompt_no_input="", description=template.description, tokenizer=tokenizer,
                        stop=stops)


def resolve(name: str | None, default: str, tokenizer) -> Template:
    """The run's template: the named one, else the model type's default, else (an entry that names none) the
    tokenizer's chat template where it has one, else alpaca. A named template that renders a sample conversation
    unlike the tokenizer's own chat template is used as asked, with one warning showing the first difference."""
    from unitune.templates import get_template

    chosen = name or default or (HF if getattr(tokenizer, "chat_template", None) else "alpaca")
    if chosen == HF:
        return from_tokenizer(tokenizer)
    template = get_template(chosen)
    if getattr(tokenizer, "chat_template", None):
        _warn_if_different(template, tokenizer)
    return template


def _warn_if_different(template: Template, tokenizer) -> None:
    key = (template.name, tokenizer.chat_template)
    if key in _warned:
        return
    _warned.add(key)
    try:
        theirs = from_tokenizer(tokenizer).prompt_for("Hi", history=[("Hello", "Hello! How can I help?")])
    except Exception as err:  # a template that cannot render this sample says nothing about ours
        log.debug("the tokenizer's chat template does not render the sample conversation: %s", err)
        return
    ours = template.prompt_for("Hi", history=[("Hello", "Hello! How can I help?")], system="")
    if ours == theirs:
        return
    at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    log.warning("--template %s and the tokenizer's own chat template prompt differently (first difference at "
                "character %d: %r vs %r); pass --template hf to use the tokenizer's", template.name, at,
                ours[max(0, at - 10): at + 30], theirs[max(0, at - 10): at + 30])


def to_jinja(template: Template, tokenizer) -> str:
    """`template` as a Jinja chat_template: rendering a conversation with add_generation_prompt gives exactly
    template.prompt_for of it (plus the bos the tokenizer adds, for servers that tokenize without special tokens)."""
    if isinstance(template, ChatTemplate):
        return tokenizer.chat_template

    def jinja(fmt: str, **slots: str) -> str:
        parts = re.split(r"(\{(?:" + "|".join(slots) + r")\})", fmt)
        return "".join(slots[p[1:-1]] if p[1:-1] in slots and p.startswith("{") else
                       ("{{ " + json.dumps(p, ensure_ascii=False) + " }}" if p else "") for p in parts)

    system = jinja(template.system_format, system="{{ system }}")
    user = jinja(template.prompt_no_input, instruction="{{ message['content'] }}", idx="{{ ns.turn }}")
    bos = "{{ bos_token }}" if _adds_bos(tokenizer) else ""
    return (
        "{%- set ns = namespace(turn=0) -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
        "{%- else -%}{%- set system = " + json.dumps(template.system, ensure_ascii=False) + " -%}"
        "{%- set turns = messages -%}{%- endif -%}"
        + bos + "{%- if system -%}" + system + "{%- endif -%}"
        "{%- for message in turns -%}"
        "{%- if message['role'] == 'user' -%}{%- set ns.turn = ns.turn + 1 -%}"
        "{%- if ns.turn > 1 -%}" + jinja(template.turn_separator) + "{%- endif -%}" + user +
        "{%- else -%}" + jinja(template.response_prefix) + "{{ message['content'] }}"
        + jinja(template.response_suffix) + "{%- endif -%}"
        "{%- endfor -%}"
    )
