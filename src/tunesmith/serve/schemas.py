"""The request bodies the server accepts, as pydantic models (OpenAI's field names).

Unknown fields are ignored, as OpenAI-compatible clients send extras (``user``,
``logprobs: false``). Fields that would let a request change how the prompt is
rendered (``chat_template``, ``chat_template_kwargs``) are refused (promise S3).
Caps that depend on the server's settings (``n``, ``max_tokens``, messages) are
checked in `check_caps`, not here, so one model serves every configuration.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tunesmith.serve.errors import APIError

REFUSED_FIELDS = ("chat_template", "chat_template_kwargs", "add_generation_prompt", "template")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_dict(self) -> dict[str, str]:
        """The message as the chat template sees it; ``developer`` is OpenAI's new ``system``."""
        content = (
            self.content
            if isinstance(self.content, str)
            else "".join(part.text for part in self.content)
        )
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_template_fields(cls, data: object) -> object:
        if isinstance(data, dict):
            for name in REFUSED_FIELDS:
                if name in data:
                    raise APIError(
                        400,
                        f"`{name}` is not accepted: each model renders prompts with the chat "
                        "template it was trained with.",
                        param=name,
                        code="unsupported_parameter",
                    )
        return data

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [stop for stop in stops if stop]

    @property
    def wants_usage_chunk(self) -> bool:
        return self.stream and self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    tools: list[dict] | None = None

    @property
    def token_limit(self) -> int | None:
        """``max_completion_tokens`` (the newer name) wins over ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens


class AddRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run_dir: str
    name: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
