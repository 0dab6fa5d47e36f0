"""The model interface: what the loop needs from a model, provider-neutral.

A model plugin's factory returns a `Model`; `Completion`, `Usage` and `ToolCall` are what it
answers with. `runner.models.litellm` (every LiteLLM provider) and the built-in `local/` and
`fake/` models all implement it; `ModelTap` stands between agents and their models (record,
replay). Nothing here imports LiteLLM.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..spec import ModelSpec

__all__ = ["Model", "Completion", "ToolCall", "Usage", "ModelTap", "Message",
           "assistant_message", "tool_messages", "token_count"]

Message = dict[str, Any]
"""One chat message, as the OpenAI wire format has it."""


def token_count(value: Any) -> int:
    """A token count as a server reported it, made safe to add up: a negative, non-numeric or
    non-finite count is 0 (a budget must never be refunded by what a server says)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        return 0
    return max(0, int(value))


@dataclass
class Usage:
    """Tokens a reply used; counts are clamped to whole numbers >= 0 (see `token_count`)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        self.prompt_tokens = token_count(self.prompt_tokens)
        self.completion_tokens = token_count(self.completion_tokens)

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class Completion:
    """One model reply, provider-neutral."""

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    model: str = ""
    latency_s: float = 0.0
    attempts: int = 1


class ModelTap(Protocol):
    """Stands between agents and their models (`--record`, `--replay`)."""

    def models(self, agent: str, build: Callable[[], list[Model]], spec: ModelSpec
               ) -> list[Model]:
        """The models agent `agent` calls, as `spec` configures them; `build()` makes the
        spec's own (not called when replaying, so no model is loaded and no key is needed)."""


class Model(Protocol):
    """What the loop needs from a model; plugins return one from their factory."""

    id: str

    def supports_tools(self) -> bool:
        """Whether native tool calling works for this model."""

    async def complete(self, messages: list[Message], *, tools: list[dict[str, Any]] | None = None,
                       stop: list[str] | None = None) -> Completion:
        """One call; raise a runner.errors.ModelError subclass on failure.

        A model may also have `constrain(tools)`: an agent that runs text ReAct with tools
        calls it once with their schemas, so that the model can hold its ReAct replies to
        them (the embedded model builds a grammar)."""



def assistant_message(reply: Completion) -> Message:
    """A reply as the assistant message of a native tool-calling conversation."""
    if not reply.tool_calls:
        return {"role": "assistant", "content": reply.text}
    calls = [{"id": c.id, "type": "function",
              "function": {"name": c.name, "arguments": c.arguments}} for c in reply.tool_calls]
    return {"role": "assistant", "content": reply.text or None, "tool_calls": calls}


def tool_messages(reply: Completion, answers: Sequence[str], failure: str | None
                  ) -> list[Message]:
    """The messages answering a reply's tool calls, by position: call i gets `answers[i]`
    (else `failure`, since providers reject a call left unanswered, even one not run), or
    `failure` as the user's word when the reply made no call.

    By position, not by id: a server may give several calls one id, and each must still get
    its own result."""
    if not reply.tool_calls:
        return [{"role": "user", "content": failure}] if failure else []
    return [{"role": "tool", "tool_call_id": c.id,
             "content": answers[i] if i < len(answers) else failure or ""}
            for i, c in enumerate(reply.tool_calls)]
