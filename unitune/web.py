"""web.py: ONE process, ONE loaded model, two faces on one FastAPI app served by uvicorn.

- a Gradio chat page at / (streaming, history, sampling sliders, system prompt, regenerate, clear);
- an OpenAI-compatible API (/v1/models, /v1/chat/completions, /v1/completions) and KnowLM's /generate.

Every generation goes through one engine (unitune.serve.engine): a worker thread that owns the model and
runs concurrent requests together in a continuous batch, fed from a bounded queue (full -> 503). A client
that disconnects cancels its own generation only.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from unitune.args import GenerationArgs, ModelArgs, flag, parse
from unitune.chat import ChatArgs, fit_history, prompt_budget
from unitune.errors import UnituneError
from unitune.serve.engine import BACKENDS, ApiError, Engine, Job

__all__ = ["ApiError", "Job", "ServeArgs", "Server", "create_app", "run"]  # ApiError, Job: where they were before

log = logging.getLogger(__name__)


@dataclass
class ServeArgs:
    host: str = flag("127.0.0.1", "address to bind; 0.0.0.0 exposes the page and the API to the network")
    port: int = flag(7860, "port of the page and the API")
    api_key: str | None = flag(None, "require 'Authorization: Bearer <key>' on /v1 and /generate and the key as "
                                     "password on the page; default: $UNITUNE_API_KEY")
    share: bool = flag(False, "also open a public Gradio share link (needs internet)")
    max_queue: int = flag(8, "requests waiting for the model at most, beyond those running; more are answered 503")
    max_batch_size: int = flag(16, "requests generated together at most (continuous batching: they join and leave "
                                   "between steps); 1 serves one at a time")
    infer_backend: str = flag("huggingface", "the engine that generates: huggingface (hf), the built-in one, or "
                                             "vllm (needs vLLM installed and a GPU)", choices=sorted(BACKENDS))
    served_model_name: str | None = flag(None, "model id the API reports; default: the adapter's (or base's) "
                                               "directory name")
    accept_any_model: bool = flag(False, "answer requests whatever `model` they name (default: another name than "
                                         "the served one is a 404 model_not_found, as in the OpenAI API)")


class Server:
    """Turns requests (API or page) into Jobs: prompt building, history budget, decoding options."""

    def __init__(self, loaded, gen_args: GenerationArgs, chat_args: ChatArgs, serve_args: ServeArgs,
                 model_id: str, engine=None) -> None:
        self.loaded, self.gen_args, self.chat_args, self.serve_args = loaded, gen_args, chat_args, serve_args
        self.model_id = model_id
        self.engine = engine or Engine(loaded, serve_args.max_queue, serve_args.max_batch_size)
        self.base_kwargs = gen_args.generate_kwargs()
        self._tokens: dict[int, tuple[str, list[int]]] = {}

    def count(self, text: str) -> int:
        return len(self.loaded.tokenizer(text)["input_ids"])

    def check_model(self, name: str | None) -> None:
        """The OpenAI API answers an unknown model with 404 model_not_found; so does this one (unless told not to)."""
        if name is None or name == self.model_id or self.serve_args.accept_any_model:
            return
        raise ApiError(404, f"the model {name!r} does not exist: this server serves {self.model_id!r} (start it with "
                            f"--accept_any_model to answer any name)", param="model", code="model_not_found")

    def token(self, token_id: int) -> tuple[str, list[int]]:
        """(text, UTF-8 bytes) of one token, as the OpenAI API reports logprobs; see unitune.web_api."""
        if token_id not in self._tokens:
            from unitune.web_api import token_text

            self._tokens[token_id] = token_text(self.loaded.tokenizer, token_id)
        return self._tokens[token_id]

    def decoding(self, min_new_tokens: int | None = None, logprobs: int | None = None, temperature=None,
                 top_p=None, top_k=None, repetition_penalty=None, num_beams=None, do_sample=None) -> dict:
        """The server's decoding preset overridden by a request; temperature 0 means greedy (the same rule as
        the flags: unitune.generation.settle).

        min_new_tokens (vLLM's ignore_eos) keeps the end-of-sequence token away until then.
        """
        from unitune.generation import check_decoding, settle

        kwargs = dict(self.base_kwargs)
        if min_new_tokens:
            kwargs["min_new_tokens"] = min_new_tokens
        if temperature is not None:
            kwargs["do_sample"] = True  # settle() turns a temperature of about 0 into greedy decoding
        for key, value in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k),
                           ("repetition_penalty", repetition_penalty), ("num_beams", num_beams),
                           ("do_sample", do_sample)):
            if value is not None:
                kwargs[key] = value
        kwargs = settle(kwargs)
        if logprobs is not None and kwargs.get("num_beams", 1) > 1:
            raise ApiError(400, "logprobs are not available with beam search (num_beams > 1, or the server's "
                                "--decoding beam)", param="logprobs")
        try:
            return check_decoding(kwargs)
        except UnituneError as err:
            raise ApiError(400, str(err)) from None

    def budget(self, prompt_tokens: int, max_tokens: int | None, param: str = "max_tokens") -> int:
        """max_new_tokens for a prompt: the request's (refused beyond the context window) or the default (cut)."""
        window = self.engine.context_window
        room = None if window is None else window - prompt_tokens
        if room is not None and room < 1:
            raise ApiError(400, f"this model's maximum context length is {window} tokens and the prompt alone has "
                                f"{prompt_tokens}", param=param, code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = self.gen_args.max_new_tokens if room is None else min(self.gen_args.max_new_tokens, room)
        if room is not None and max_tokens > room:
            raise ApiError(400, f"this model's maximum context length is {window} tokens; the prompt has "
                                f"{prompt_tokens} and {param} asks for {max_tokens} more", param=param,
                           code="context_length_exceeded")
        return max_tokens

    def chat_job(self, message: str, history: list, system: str | None, max_tokens: int | None,
                 stops=(), seed=None, input: str = "", ignore_eos: bool = False, logprobs: int | None = None,
                 params: tuple[str, str] = ("messages", "max_tokens"), **decoding) -> Job:
        """A templated multi-turn job; the oldest turns are dropped to fit --cutoff_len (as in server.py).

        params names the request fields of the prompt and of the token budget, for errors about them.
        """
        template, cutoff = self.loaded.template, self.chat_args.cutoff_len
        if system is None:
            system = self.chat_args.system
        window, wanted = self.engine.context_window, max_tokens or self.gen_args.max_new_tokens
        limit = prompt_budget(cutoff, window, wanted)
        prompt, kept, n_tokens = fit_history(template, self.loaded.tokenizer, message, history, system, limit,
                                             input)
        if n_tokens > cutoff:
            raise ApiError(400, f"the {'last message' if params[0] == 'messages' else params[0]} makes a prompt of "
                                f"{n_tokens} tokens, more than the server's --cutoff_len {cutoff}", param=params[0],
                           code="context_length_exceeded")
        if self.chat_args.verbose:
            log.info("prompt (%d tokens, %d turns of history):\n%s", n_tokens, len(kept), prompt)
        new_tokens = self.budget(n_tokens, max_tokens, params[1])
        kwargs = self.decoding(new_tokens if ignore_eos else None, logprobs, **decoding)
        return self.engine.submit(Job(prompt, new_tokens, (*template.stop, *stops), kwargs, seed,
                                      logprobs=logprobs))

    def raw_budget(self, prompt: str, max_tokens: int) -> int:
        n_tokens = self.count(prompt)
        if n_tokens == 0:  # "" is a document's start: TextStream generates from BOS
            if self.loaded.tokenizer.bos_token_id is None:
                raise ApiError(400, "the prompt is empty and this model's tokenizer has no BOS token to start from",
                               param="prompt")
            n_tokens = 1
        if n_tokens > self.chat_args.cutoff_len:
            raise ApiError(400, f"the prompt has {n_tokens} tokens, more than the server's --cutoff_len "
                                f"{self.chat_args.cutoff_len}", param="prompt", code="context_length_exceeded")
        return self.budget(n_tokens, max_tokens)

    def raw_job(self, prompt: str, max_tokens: int, stops=(), seed=None, ignore_eos: bool = False,
                logprobs: int | None = None, **decoding) -> Job:
        """An untemplated continuation (/v1/completions): whitespace is the model's, not trimmed."""
        new_tokens = self.raw_budget(prompt, max_tokens)
        kwargs = self.decoding(new_tokens if ignore_eos else None, logprobs, **decoding)
        return self.engine.submit(Job(prompt, new_tokens, tuple(stops), kwargs, seed, strip=False,
                                      logprobs=logprobs))


def model_id_for(model_args: ModelArgs, serve_args: ServeArgs) -> str:
    if serve_args.served_model_name:
        return serve_args.served_model_name
    return Path(model_args.adapter or model_args.base_path).resolve().name or "unitune"


def create_app(loaded, gen_args: GenerationArgs | None = None, chat_args: ChatArgs | None = None,
               serve_args: ServeArgs | None = None, model_id: str = "unitune", page: bool = True, engine=None):
    """The FastAPI app (API routes, plus the Gradio page mounted at / unless page=False); for tests and run().

    engine: another backend's engine (e.g. vLLM's); default the built-in one over `loaded`."""
    from unitune.web_api import add_routes

    server = Server(loaded, gen_args or GenerationArgs(), chat_args or ChatArgs(), serve_args or ServeArgs(),
                    model_id, engine)
    app = add_routes(server)
    if page:
        import gradio as gr

        from unitune.web_page import build_page

        key = server.serve_args.api_key
        auth = (lambda _user, password: hmac.compare_digest(password, key)) if key else None
        app = gr.mount_gradio_app(app, build_page(server), path="/", auth=auth,
                                  auth_message="Password: the server's --api_key" if key else None,
                                  footer_links=[], run_history=False)
    return app


def run(argv: list[str] | None = None) -> None:
    from unitune.env import require_extra
    from unitune.loader import check_model_args, load

    require_extra("web", ("gradio", "fastapi", "uvicorn"), "web.py")

    (model_args, gen_args, chat_args, serve_args), _ = parse(
        [ModelArgs, GenerationArgs, ChatArgs, ServeArgs], argv, prog="web.py",
        description="Serve a model (and adapter) as a Gradio chat page and an OpenAI-compatible API on one port.")
    check_model_args(model_args)  # flag mistakes surface before the slow imports
    if serve_args.infer_backend == "vllm":
        from unitune.serve.vllm_engine import VllmEngine

        VllmEngine.check(model_args)  # one error line, before anything loads, where vLLM cannot run
    gen_args.generate_kwargs()  # every flag's bounds were checked by parse (unitune/limits.py)
    if serve_args.api_key is None:
        serve_args.api_key = os.environ.get("UNITUNE_API_KEY") or None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if serve_args.host not in ("127.0.0.1", "localhost", "::1") and not serve_args.api_key:
        log.warning("--host %s without --api_key: anyone who reaches this port can use the model", serve_args.host)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline server
    import uvicorn

    if serve_args.infer_backend == "vllm":
        loaded, engine = VllmEngine.load(model_args, serve_args)
    else:
        loaded, engine = load(model_args, mode="infer"), None
    app = create_app(loaded, gen_args, chat_args, serve_args, model_id_for(model_args, serve_args), engine=engine)
    if serve_args.share:
        _share(app, serve_args)
    log.info("serving %s: page http://%s:%d/  API http://%s:%d/v1", model_id_for(model_args, serve_args),
             serve_args.host, serve_args.port, serve_args.host, serve_args.port)
    uvicorn.run(app, host=serve_args.host, port=serve_args.port, log_level="warning")


def _share(app, serve_args: ServeArgs) -> None:
    """Open a Gradio share tunnel to this port once the server is up (only with --share)."""
    import secrets

    from gradio import networking

    def tunnel() -> None:
        try:
            url = networking.setup_tunnel("127.0.0.1", serve_args.port, secrets.token_urlsafe(32), None, None)
            log.info("public share link: %s", url)
        except Exception as err:  # no internet: the local server keeps working
            log.warning("--share: no public link (%s)", err)

    if not serve_args.api_key:
        log.warning("--share without --api_key: the API is public to anyone with the link")
    app.router.on_startup.append(lambda: threading.Thread(target=tunnel, daemon=True).start())
