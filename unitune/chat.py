"""Terminal chat (server.py): multi-turn in the model's template, replies streamed as they are generated.

`fit_history` (the history budget) is shared with the web page and the API (unitune/web.py).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import TextIO

from unitune.args import GenerationArgs, ModelArgs, flag, parse

log = logging.getLogger(__name__)

EXIT_WORDS = ("exit", "stop", "quit", "/exit", "/stop", "/quit")
CLEAR_WORDS = ("clear", "/clear")


@dataclass
class ChatArgs:
    cutoff_len: int = flag(1024, "most prompt tokens; the oldest turns of the history are dropped to fit")
    system: str | None = flag(None, "system prompt; default: the template's own", aliases=("--system_prompt",))
    verbose: bool = flag(False, "show the full prompt the model gets before each reply")


def context_window(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def prompt_budget(cutoff_len: int, window: int | None, max_new_tokens: int) -> int:
    """Prompt tokens allowed: --cutoff_len, less where the context window must also hold the reply."""
    if not window:
        return cutoff_len
    return min(cutoff_len, window - max_new_tokens if max_new_tokens < window else window // 2)


def fit_history(template, tokenizer, message: str, history: list, system: str | None = None,
                cutoff_len: int = 1024, input: str = "") -> tuple[str, list, int]:
    """The prompt answering `message` after `history`, oldest turns dropped until it fits `cutoff_len` tokens.

    history is a list of (user, assistant) pairs. Returns (prompt, kept history, prompt tokens); when
    even the message alone is longer than cutoff_len, the count says so and the caller decides.
    """
    kept = [(str(q), str(a)) for q, a in history]
    while True:
        prompt = template.prompt_for(message, input, kept, system)
        n_tokens = len(tokenizer(prompt)["input_ids"])
        if n_tokens <= cutoff_len or not kept:
            if len(kept) < len(history):
                log.info("dropped %d oldest turn(s) to fit %d prompt tokens", len(history) - len(kept), cutoff_len)
            return prompt, kept, n_tokens
        kept.pop(0)


class ChatSession:
    """The read-reply loop; input and output streams are parameters so it can run on any terminal."""

    def __init__(self, loaded, gen_args: GenerationArgs, chat_args: ChatArgs,
                 stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
        self.loaded, self.gen_args, self.chat_args = loaded, gen_args, chat_args
        self.gen_kwargs = gen_args.generate_kwargs()
        self.stdin, self.stdout = stdin, stdout
        self.history: list[tuple[str, str]] = []

    def say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def read(self) -> str | None:
        """One user line; None at end of input. Ctrl-C at the prompt only starts a new line."""
        while True:
            try:
                if self.stdin is sys.stdin and self.stdout is sys.stdout:
                    return input("User: ")  # input() gives line editing where readline exists
                self.say("User: ")
                line = self.stdin.readline()
                return line.rstrip("\n") if line else None
            except EOFError:
                return None
            except KeyboardInterrupt:
                self.say(" (type 'exit' or press Ctrl-D to leave)\n")

    def reply(self, message: str) -> str | None:
        """Stream the answer to `message`; the full text, or None when nothing was sent or it was interrupted."""
        from unitune.generation import stream_generate

        loaded, args = self.loaded, self.chat_args
        window, max_new = context_window(loaded.model), self.gen_args.max_new_tokens
        budget = prompt_budget(args.cutoff_len, window, max_new)
        prompt, kept, n_tokens = fit_history(loaded.template, loaded.tokenizer, message, self.history,
                                             args.system, budget)
        if n_tokens > budget:
            self.say(f"(message makes a prompt of {n_tokens} tokens, more than the {budget} that --cutoff_len "
                     f"and the model's context leave; not sent)\n")
            return None
        if window:
            max_new = min(max_new, window - n_tokens)
        if len(kept) < len(self.history):
            self.say(f"(forgot the {len(self.history) - len(kept)} oldest turn(s) to fit --cutoff_len)\n")
            self.history = kept
        if args.verbose:
            self.say(f"----- prompt ({n_tokens} tokens) -----\n{prompt}\n----- end of prompt -----\n")
        stream = stream_generate(loaded.model, loaded.tokenizer, prompt, max_new, loaded.template.stop,
                                 **self.gen_kwargs)
        pieces = []
        self.say("Assistant: ")
        it = iter(stream)
        try:
            for piece in it:
                pieces.append(piece)
                self.say(piece)
        except KeyboardInterrupt:
            stream.cancel()
            it.close()  # waits for generate() to stop
            self.say(" [interrupted; this turn is not kept in the history]\n")
            return None
        self.say("\n")
        return "".join(pieces)

    def loop(self) -> None:
        try:
            import readline  # noqa: F401  (input() then offers line editing and recall)
        except ImportError:
            pass
        self.say("Chat with the model. Commands: 'clear' forgets the history, 'exit' or 'stop' leaves; "
                 "Ctrl-C interrupts a reply.\n")
        while True:
            line = self.read()
            if line is None:
                self.say("\n")
                return
            message = line.strip()
            if not message:
                continue
            if message.lower() in EXIT_WORDS:
                return
            if message.lower() in CLEAR_WORDS:
                self.history = []
                self.say("(history cleared)\n")
                continue
            try:
                answer = self.reply(message)
            except KeyboardInterrupt:  # before the reply started streaming (reply() handles it after)
                self.say(" [interrupted]\n")
                continue
            if answer is not None:
                self.history.append((message, answer))


def run(argv: list[str] | None = None) -> None:
    from unitune.loader import check_model_args, load

    (model_args, gen_args, chat_args), _ = parse(
        [ModelArgs, GenerationArgs, ChatArgs], argv, prog="server.py",
        description="Chat with a base model (and adapter) in the terminal; replies stream as they are generated.")
    check_model_args(model_args)  # flag mistakes surface before the slow imports
    gen_args.generate_kwargs()
    logging.basicConfig(level=logging.INFO if chat_args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    loaded = load(model_args, mode="infer")
    ChatSession(loaded, gen_args, chat_args).loop()
