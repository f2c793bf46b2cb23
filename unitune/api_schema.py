"""Request and response models of the OpenAI-compatible API and KnowLM's /generate route (web.py).

Requests are validated strictly (a string is not a number, a number is not a string) so a client's
mistake becomes a 400 naming the field instead of a surprise or a server error. Unknown fields are
ignored: OpenAI clients send options this server has no use for (user, logit_bias ...).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# a sanity bound only: the real limit is the model's context window, checked per request
MAX_TOKENS_LIMIT = 1_000_000


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class Sampling(_Request):
    """Decoding options every route accepts; None keeps the server's --decoding preset."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    presence_penalty: float | None = Field(None, ge=-2, le=2)  # accepted for compatibility; not applied
    frequency_penalty: float | None = Field(None, ge=-2, le=2)  # accepted for compatibility; not applied
    seed: int | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool = False  # vLLM's extension: generate exactly max_tokens tokens

    def decoding(self) -> dict:
        """The options unitune.web.Server.decoding takes."""
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "repetition_penalty": self.repetition_penalty}

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value):
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Request):
    include_usage: bool = False


class ChatCompletionRequest(Sampling):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(Sampling):
    model: str | None = None
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1, le=MAX_TOKENS_LIMIT)  # OpenAI's default for completions
    n: int = Field(1, ge=1, le=1, description="one choice per prompt")
    echo: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, value):
        if isinstance(value, list) and not 1 <= len(value) <= 16:
            raise ValueError("give 1 to 16 prompts")
        return value


class GenerateParameters(Sampling):
    """KnowLM's `parameters`; max_tokens and max_new_tokens are the same thing."""

    max_new_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    num_beams: int | None = Field(None, ge=1, le=8)
    do_sample: bool | None = None


class GenerateRequest(_Request):
    instruction: str
    input: str = ""
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)


class GenerateResponse(BaseModel):
    generated_text: str | None
    num_output_tokens: int
    error: dict | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


def error_json(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """The OpenAI error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": ErrorBody(message=message, type=type, param=param, code=code).model_dump()}
