"""Prompt templates, loaded from templates/*.json; one renderer serves training, generation and chat."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache

from unitune.errors import UnituneError
from unitune.paths import asset_dir



@dataclass(frozen=True)
class Template:
    name: str
    prompt_no_input: str
    prompt: str = ""  # with an {input} slot; when empty, input is appended to the instruction
    system: str = ""
    system_format: str = "{system}\n\n"
    response_prefix: str = ""  # written before each response, as part of it (ChatGLM3 / GLM-4: the model writes
    # the "\n" after <|assistant|> itself, so their own prompt code ends the prompt at <|assistant|>)
    response_suffix: str = ""
    turn_separator: str = ""
    stop: tuple[str, ...] = field(default_factory=tuple)
    description: str = ""

    def user_turn(self, instruction: str, input: str = "", idx: int = 1) -> str:
        if input and self.prompt:
            return self.prompt.format(instruction=instruction, input=input, idx=idx)
        if input:
            instruction = f"{instruction}\n{input}"
        return self.prompt_no_input.format(instruction=instruction, idx=idx)

    def segments(self, instruction: str, input: str = "", output: str | None = None,
                 history: list | None = None, system: str | None = None) -> list[tuple[str, str]]:
        """(prompt, response) text pairs of a conversation; the last response may be None (to generate).

        The system text opens the first prompt; later prompts start with the turn separator.
        """
        system_text = self.system if system is None else system
        head = self.system_format.format(system=system_text) if system_text else ""
        turns = [(q, a) for q, a in (history or [])] + [(instruction, output)]
        out = []
        for idx, (query, response) in enumerate(turns, start=1):
            user_input = input if idx == len(turns) else ""
            prompt = (head if idx == 1 else self.turn_separator) + self.user_turn(query, user_input, idx)
            out.append((prompt, None if response is None else self.response_prefix + response + self.response_suffix))
        return out

    def ends_turns_itself(self) -> bool:
        """Whether the template writes its own end-of-turn text (then training adds no eos after it)."""
        return bool(self.response_suffix)

    def fingerprint(self) -> str:
        """What the tokenized-data cache keys this template by."""
        fields = {k: v for k, v in self.__dict__.items() if k != "tokenizer"}
        fields["chat_template"] = getattr(getattr(self, "tokenizer", None), "chat_template", None)
        return json.dumps(fields, sort_keys=True, ensure_ascii=False)

    def digest(self) -> str:
        """A short hash of fingerprint(): what answers written with this template are keyed by, so an edited
        template file or chat template never gets answers it did not prompt."""
        return hashlib.sha256(self.fingerprint().encode()).hexdigest()[:16]

    def prompt_for(self, instruction: str, input: str = "", history: list | None = None,
                   system: str | None = None) -> str:
        """The full text a model continues to answer `instruction`."""
        parts = self.segments(instruction, input, None, history, system)
        return "".join(p + (r or "") for p, r in parts)


def template_names() -> list[str]:
    return sorted(p.stem for p in asset_dir("templates").glob("*.json"))


@lru_cache(maxsize=None)
def get_template(name: str) -> Template:
    path = asset_dir("templates") / f"{name}.json"
    if not path.is_file():
        known = template_names()
        raise UnituneError(f"unknown --template {name!r}; choose one of: {', '.join(known)}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw["stop"] = tuple(raw.get("stop", ()))
        return Template(**raw)
    except (json.JSONDecodeError, TypeError) as err:
        raise UnituneError(f"{path}: not a valid template ({err})") from None
