"""The HTTP face of web.py: OpenAI-compatible /v1 routes and KnowLM's /generate, on FastAPI.

Bodies are parsed here (not by FastAPI) so bad JSON, wrong types and out-of-range values all become
a 400 in OpenAI's error shape naming the field, never a 422 or a 500.
(No `from __future__ import annotations` here: FastAPI must resolve the handlers' `Request` hints.)
"""

import hmac
import json
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
from unitune.web import ApiError, Job

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
        where = ".".join(str(part) for part in first["loc"])
        more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
        raise ApiError(400, f"{where or 'body'}: {first['msg']}{more}", param=where or None) from None


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
        return {"status": "ok", "model": server.model_id, "waiting": server.engine.jobs.qsize(),
                **server.engine.counts}

    api = APIRouter(dependencies=[Depends(check_key)])

    @api.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": server.model_id, "object": "model", "created": started,
                                            "owned_by": "unitune"}]}

    @api.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await parse_body(request, ChatCompletionRequest)
        system, history, message = split_messages(req.messages)
        job = server.chat_job(message, history, system, req.max_completion_tokens or req.max_tokens, req.stop_list(),
                              req.seed, ignore_eos=req.ignore_eos, **req.decoding())
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": server.model_id,
                "system_fingerprint": None}
        if not req.stream:
            text = await job.text(request.is_disconnected)
            return {**head, "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "logprobs": None, "finish_reason": job.finish_reason}],
                    "usage": usage(job.prompt_tokens, job.completion_tokens)}
        with_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(delta: dict, finish: str | None = None) -> str:
            body = {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
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
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        for prompt in prompts:  # refuse the whole request before generating anything
            server.raw_budget(prompt, req.max_tokens)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": server.model_id, "system_fingerprint": None}

        def submit(prompt: str) -> Job:
            return server.raw_job(prompt, req.max_tokens, req.stop_list(), req.seed, req.ignore_eos,
                                  **req.decoding())

        if not req.stream:
            choices, used = [], [0, 0]
            for index, prompt in enumerate(prompts):  # one at a time: the queue stays fair to other clients
                job = submit(prompt)
                text = await job.text(request.is_disconnected)
                choices.append({"index": index, "text": (prompt + text) if req.echo else text, "logprobs": None,
                                "finish_reason": job.finish_reason})
                used[0] += job.prompt_tokens
                used[1] += job.completion_tokens
            return {**head, "choices": choices, "usage": usage(*used)}
        with_usage = bool(req.stream_options and req.stream_options.include_usage)
        first = submit(prompts[0])

        def chunk(index: int, text: str, finish: str | None = None) -> str:
            body = {**head, "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}]}
            return sse({**body, "usage": None} if with_usage else body)

        async def events():
            used, job = [0, 0], first
            try:
                for index, prompt in enumerate(prompts):
                    job = first if index == 0 else submit(prompt)
                    if req.echo:
                        yield chunk(index, prompt)
                    async for piece in job.pieces():
                        yield chunk(index, piece)
                    yield chunk(index, "", job.finish_reason)
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
        job = server.chat_job(req.instruction, [], None, p.max_new_tokens or p.max_tokens, p.stop_list(), p.seed,
                              input=req.input, ignore_eos=p.ignore_eos, num_beams=p.num_beams,
                              do_sample=p.do_sample, **p.decoding())
        text = await job.text(request.is_disconnected)
        return GenerateResponse(generated_text=text, num_output_tokens=job.completion_tokens).model_dump()

    app.include_router(api)
    return app
