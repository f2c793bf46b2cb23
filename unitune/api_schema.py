"""Request and response models of the OpenAI-compatible API and KnowLM's /generate route (web.py).

Requests are validated strictly (a string is not a number, a number is not a string) so a client's
mistake becomes a 400 naming the field instead of a surprise or a server error; every value that reaches
generate() is bounded by the same rules the command-line flags obey (unitune/limits.py). Unknown fields
are ignored: OpenAI clients send options this server has no use for (user, store, metadata ...). Known
OpenAI options it does not implement (tools, response_format ...) are refused unless they ask for what
the server does anyway, so a client never silently gets something other than what it asked for.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from unitune.limits import RULES

# field types of the rule table the command-line flags obey too
Temperature, TopP, TopK, RepetitionPenalty, NumBeams, MaxTokens, Seed, TopLogprobs, CompletionLogprobs, Penalty = (
    RULES[name].annotated() for name in ("temperature", "top_p", "top_k", "repetition_penalty", "num_beams",
                                         "max_tokens", "seed", "top_logprobs", "completion_logprobs", "penalty"))


def _only(*harmless: Any):
    """A field this server does not implement: accepted only as None or one of the `harmless` values."""
    def check(value: Any) -> Any:
        if value is None or any(value == ok and type(value) is type(ok) for ok in harmless):
            return value
        allowed = " or ".join(repr(ok) for ok in harmless)
        raise ValueError(f"not supported by this server{f' (only {allowed})' if harmless else ''}")

    return Annotated[Any, AfterValidator(check)]


def _zero(value: float | None) -> float | None:
    if value:
        raise ValueError("not supported by this server (only 0)")
    return value


# every new token is matched against each stop string's prefixes: a bound keeps that cheap
StopString = Annotated[str, Field(max_length=256)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class Sampling(_Request):
    """Decoding options every route accepts; None keeps the server's --decoding preset."""

    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    repetition_penalty: RepetitionPenalty | None = None
    # OpenAI's penalties are not implemented: 0 (their default, which many clients send) is accepted
    presence_penalty: Annotated[Penalty | None, AfterValidator(_zero)] = None
    frequency_penalty: Annotated[Penalty | None, AfterValidator(_zero)] = None
    logit_bias: _only({}) = None
    seed: Seed | None = None
    stop: StopString | list[StopString] | None = None  # at most 4 (checked below)
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
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = False
    top_logprobs: TopLogprobs | None = None
    # not implemented: refused unless they ask for plain text from this one model
    response_format: _only({"type": "text"}) = None
    tools: _only([]) = None
    tool_choice: _only("none") = None
    functions: _only([]) = None
    function_call: _only("none") = None
    audio: _only() = None
    modalities: _only(["text"]) = None
    prediction: _only() = None
    web_search_options: _only() = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, value, info: ValidationInfo):
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return value


class CompletionRequest(Sampling):
    model: str | None = None
    prompt: str | list[str]
    max_tokens: MaxTokens = 16  # OpenAI's default for completions
    n: int = Field(1, ge=1, le=1, description="one choice per prompt")
    echo: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: CompletionLogprobs | None = None
    suffix: _only("") = None
    best_of: _only(1) = None

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, value):
        if isinstance(value, list) and not 1 <= len(value) <= 16:
            raise ValueError("give 1 to 16 prompts")
        return value


class GenerateParameters(Sampling):
    """KnowLM's `parameters`; max_tokens and max_new_tokens are the same thing."""

    max_new_tokens: MaxTokens | None = None
    max_tokens: MaxTokens | None = None
    num_beams: NumBeams | None = None
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
