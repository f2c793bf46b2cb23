"""The HTTP face of web.py: OpenAI-compatible /v1 routes and KnowLM's /generate, on FastAPI.

Bodies are parsed here (not by FastAPI) so bad JSON, wrong types and out-of-range values all become
a 400 in OpenAI's error shape naming the field, never a 422 or a 500.
(No `from __future__ import annotations` here: FastAPI must resolve the handlers' `Request` hints.)
"""

import functools
import hmac
import json
import re
import time
import uuid

from unitune.api_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
    GenerateResponse,
    Usage,
    error_json,
)
from unitune.serve.engine import ApiError, Job

DONE = "data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens).model_dump()


async def parse_body(request, model):
    from pydantic import ValidationError

    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"")
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise ApiError(400, f"the request body is not valid JSON ({first['msg']})") from None
        where = ".".join(str(part) for part in first["loc"] if not _union_tag(part))
        more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
        raise ApiError(400, f"{where or 'body'}: {reason(first['msg'])}{more}", param=where or None) from None


# ---------------------------------------------------------------- logprobs in the OpenAI shapes
@functools.cache
def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_text(tokenizer, token_id: int) -> tuple[str, list[int]]:
    """(text, UTF-8 bytes) of one token. A token holding part of a multi-byte character has no text of its own:
    its bytes are exact and its text reads "bytes:\\xe4\\xbd" (the OpenAI API's way)."""
    piece = tokenizer.convert_ids_to_tokens(token_id) or ""
    decoder = type(getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)).__name__
    byte_match = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)  # sentencepiece byte fallback
    if decoder == "ByteLevel" and all(c in _byte_decoder() for c in piece):
        raw = bytes(_byte_decoder()[c] for c in piece)
    elif byte_match:
        raw = bytes([int(byte_match.group(1), 16)])
    else:
        raw = tokenizer.decode([token_id]).encode("utf-8")
    try:
        return raw.decode("utf-8"), list(raw)
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), list(raw)


def chat_logprobs(server, entries: list) -> dict:
    """Chat completions' choice.logprobs: {"content": [{token, logprob, bytes, top_logprobs}], "refusal"}."""
    def item(token_id: int, logprob: float) -> dict:
        text, raw = server.token(token_id)
        return {"token": text, "logprob": logprob, "bytes": raw}

    return {"content": [{**item(token_id, logprob), "top_logprobs": [item(i, lp) for i, lp in top]}
                        for token_id, logprob, top in entries], "refusal": None}


def completion_logprobs(server, entries: list, offset: int) -> dict:
    """Completions' choice.logprobs: parallel lists tokens / token_logprobs / top_logprobs / text_offset."""
    out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for token_id, logprob, top in entries:
        text = server.token(token_id)[0]
        out["tokens"].append(text)
        out["token_logprobs"].append(logprob)
        out["top_logprobs"].append({server.token(i)[0]: lp for i, lp in top})
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def reason(message: str) -> str:
    """One of pydantic's complaints as the end of a sentence, in the words flag errors use: 'must be greater than 0'."""
    if message.startswith("Value error, "):
        return message[len("Value error, "):]
    return message.replace("Input should be", "must be", 1)


def _union_tag(part) -> bool:
    """pydantic names the member of a union a value failed ('str', 'list[str]', 'constrained-str', 'TextPart') in
    an error's location; the client's field is the path without them."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or not re.fullmatch(r"[a-z_][a-z0-9_]*",
                                                                                              part))


def split_messages(messages) -> tuple[str | None, list, str]:
    """OpenAI messages -> (system text or None, [(user, assistant)] history, last user message)."""
    system, history, pending = [], [], []
    for message in messages:
        if message.role in ("system", "developer"):
            system.append(message.text())
        elif message.role == "user":
            pending.append(message.text())
        else:  # an assistant turn closes the user turn(s) before it
            history.append(("\n".join(pending), message.text()))
            pending = []
    if not pending:
        raise ApiError(400, "the last message must come from the user", param="messages")
    return ("\n".join(system) if system else None), history, "\n".join(pending)


def add_routes(server):
    """A FastAPI app with the API routes of `server` (a unitune.web.Server)."""
    from fastapi import APIRouter, Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="unitune", description=f"OpenAI-compatible API serving {server.model_id}")
    started = int(time.time())

    async def check_key(request: Request) -> None:
        key = server.serve_args.api_key
        if not key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    def error_response(request: Request, status: int, body: dict) -> JSONResponse:
        if request.url.path == "/generate":  # KnowLM's shape, with the OpenAI error inside
            body = GenerateResponse(generated_text=None, num_output_tokens=0, error=body["error"]).model_dump()
        headers = {"Retry-After": "1"} if status == 503 else None
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, err: ApiError):
        return error_response(request, err.status, error_json(err.message, err.type, err.param, err.code))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, err: RequestValidationError):
        return error_response(request, 400, error_json(str(err.errors()[:1])))

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, err: HTTPException):
        return error_response(request, err.status_code, error_json(str(err.detail), "invalid_request_error"))

    @app.exception_handler(Exception)
    async def on_crash(request: Request, err: Exception):
        return error_response(request, 500, error_json(f"internal error: {err}", "server_error"))

    @app.get("/health", include_in_schema=False)
    async def health():
        engine = server.engine
        return {"status": "ok", "model": server.model_id, "waiting": engine.waiting, "running": engine.running,
                "largest_batch": engine.largest_batch, **engine.counts}

    api = APIRouter(dependencies=[Depends(check_key)])

    def model_card() -> dict:
        return {"id": server.model_id, "object": "model", "created": started, "owned_by": "unitune"}

    @api.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @api.get("/v1/models/{model:path}")
    async def model(model: str):
        if model != server.model_id:
            raise ApiError(404, f"the model {model!r} does not exist: this server serves {server.model_id!r}",
                           param="model", code="model_not_found")
        return model_card()

    @api.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await parse_body(request, ChatCompletionRequest)
        server.check_model(req.model)
        system, history, message = split_messages(req.messages)
        top = (req.top_logprobs or 0) if req.logprobs else None
        budget = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        job = server.chat_job(message, history, system, req.max_completion_tokens or req.max_tokens, req.stop_list(),
                              req.seed, ignore_eos=req.ignore_eos, logprobs=top, params=("messages", budget),
                              **req.decoding())
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": server.model_id,
                "system_fingerprint": None}
        if not req.stream:
            text = await job.text(request.is_disconnected)
            return {**head, "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "logprobs": None if top is None else chat_logprobs(server, job.entries),
                                 "finish_reason": job.finish_reason}],
                    "usage": usage(job.prompt_tokens, job.completion_tokens)}
        with_usage = bool(req.stream_options and req.stream_options.include_usage)
        sent = [0]  # logprob entries already in a chunk

        def new_logprobs():
            if top is None:
                return None
            entries, sent[0] = job.entries[sent[0]:], len(job.entries)
            return chat_logprobs(server, entries)

        def chunk(delta: dict, finish: str | None = None) -> str:
            logprobs = new_logprobs() if delta.get("content") or finish else None
            body = {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
            return sse({**body, "usage": None} if with_usage else body)

        async def events():
            yield chunk({"role": "assistant", "content": ""})
            try:
                async for piece in job.pieces():
                    yield chunk({"content": piece})
            except ApiError as err:
                yield sse(error_json(err.message, err.type))
                yield DONE
                return
            finally:  # however the response ends, this generation ends with it
                job.cancel.set()
            yield chunk({}, job.finish_reason)
            if with_usage:
                yield sse({**head, "object": "chat.completion.chunk", "choices": [],
                           "usage": usage(job.prompt_tokens, job.completion_tokens)})
            yield DONE

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    @api.post("/v1/completions")
    async def completions(request: Request):
        req = await parse_body(request, CompletionRequest)
        server.check_model(req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        for prompt in prompts:  # refuse the whole request before generating anything
            server.raw_budget(prompt, req.max_tokens)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": server.model_id, "system_fingerprint": None}

        def submit(prompt: str) -> Job:
            return server.raw_job(prompt, req.max_tokens, req.stop_list(), req.seed, req.ignore_eos,
                                  logprobs=req.logprobs, **req.decoding())

        def logprobs(entries: list, offset: int):
            # the prompt's own tokens are not scored: with echo, the offsets start after it
            return None if req.logprobs is None else completion_logprobs(server, entries, offset)

        if not req.stream:
            choices, used = [], [0, 0]
            for index, prompt in enumerate(prompts):  # one at a time: the queue stays fair to other clients
                job = submit(prompt)
                text = await job.text(request.is_disconnected)
                if job.client_left:  # nobody reads the answer: do not start the next prompt
                    break
                start = len(prompt) if req.echo else 0
                choices.append({"index": index, "text": (prompt + text) if req.echo else text,
                                "logprobs": logprobs(job.entries, start), "finish_reason": job.finish_reason})
                used[0] += job.prompt_tokens
                used[1] += job.completion_tokens
            return {**head, "choices": choices, "usage": usage(*used)}
        with_usage = bool(req.stream_options and req.stream_options.include_usage)
        first = submit(prompts[0])

        def chunk(index: int, text: str, finish: str | None = None, scores=None) -> str:
            body = {**head, "choices": [{"index": index, "text": text, "logprobs": scores, "finish_reason": finish}]}
            return sse({**body, "usage": None} if with_usage else body)

        async def events():
            used, job = [0, 0], first
            try:
                for index, prompt in enumerate(prompts):
                    job = first if index == 0 else submit(prompt)
                    offset, sent = (len(prompt) if req.echo else 0), 0
                    if req.echo:
                        yield chunk(index, prompt)
                    async for piece in job.pieces():
                        yield chunk(index, piece, None, logprobs(job.entries[sent:], offset))
                        offset, sent = offset + len(piece), len(job.entries)
                    yield chunk(index, "", job.finish_reason, logprobs(job.entries[sent:], offset))
                    used[0] += job.prompt_tokens
                    used[1] += job.completion_tokens
            except ApiError as err:
                yield sse(error_json(err.message, err.type))
                yield DONE
                return
            finally:
                job.cancel.set()
            if with_usage:
                yield sse({**head, "choices": [], "usage": usage(*used)})
            yield DONE

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    @api.post("/generate")
    async def generate(request: Request):
        req = await parse_body(request, GenerateRequest)
        p = req.parameters
        budget = "parameters.max_new_tokens" if p.max_new_tokens else "parameters.max_tokens"
        job = server.chat_job(req.instruction, [], None, p.max_new_tokens or p.max_tokens, p.stop_list(), p.seed,
                              input=req.input, ignore_eos=p.ignore_eos, params=("instruction", budget),
                              num_beams=p.num_beams, do_sample=p.do_sample, **p.decoding())
        text = await job.text(request.is_disconnected)
        return GenerateResponse(generated_text=text, num_output_tokens=job.completion_tokens).model_dump()

    # below the routes above, so it catches only what they do not serve: without it the Gradio page mounted at /
    # would answer an unknown /v1 path with its own {"detail": "Not Found"}
    @api.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def unknown(request: Request, path: str):
        raise ApiError(404, f"invalid URL ({request.method} {request.url.path}): this server answers GET /v1/models, "
                            f"POST /v1/chat/completions, POST /v1/completions and POST /generate",
                       code="unknown_url")

    app.include_router(api)
    return app
