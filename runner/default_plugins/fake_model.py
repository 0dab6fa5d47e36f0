"""The `fake/` model: scripted replies for tests and plugin authors, no network.

    model:
      id: fake/script
      options:
        replies:
          - "Thought: add them\nAction: calculator[2+2]"
          - {tool_calls: [{name: calculator, arguments: {expression: "2+2"}}]}
          - {content: "Thought: a long", finish_reason: length}   # cut off at max_tokens
          - "Final Answer: 4"
        native_tools: true     # claim native tool calling (for loop.style: auto)

`fake/echo` answers every question with the question itself. Stop sequences are applied as a
provider would. Each call's messages, tools and stop sequences are kept in `calls`,
`tools_seen` and `stops_seen`, for tests to check what the model was sent.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import ModelProviderError
from ..hookspecs import hookimpl
from ..models import Completion, ToolCall, Usage
from ..spec import ModelSpec

_QUESTION = re.compile(r"^Question:\s*(.*)$", re.M)


class FakeModel:
    """Plays `options.replies` in order; raises once they run out."""

    def __init__(self, spec: ModelSpec, model_id: str) -> None:
        self.spec, self.id = spec, model_id
        self.replies: list[Any] = list(spec.options.get("replies", []))
        self.calls: list[list[dict[str, Any]]] = []
        self.tools_seen: list[Any] = []
        self.stops_seen: list[list[str] | None] = []
        self._native = bool(spec.options.get("native_tools", False))

    def supports_tools(self) -> bool:
        return self._native

    async def complete(self, messages: list[dict[str, Any]], *, tools: Any = None,
                       stop: list[str] | None = None) -> Completion:
        self.calls.append(messages)
        self.tools_seen.append(tools)
        self.stops_seen.append(stop)
        prompt = "".join(str(m.get("content") or "") for m in messages)
        if self.id == "fake/echo":
            found = _QUESTION.findall(prompt)
            reply: Any = f"Final Answer: {found[-1] if found else messages[-1]['content']}"
        elif len(self.calls) > len(self.replies):
            raise ModelProviderError(f"{self.id}: the script has only {len(self.replies)} replies")
        else:
            reply = self.replies[len(self.calls) - 1]
        text, calls = (reply, []) if isinstance(reply, str) else (
            reply.get("content") or "", reply.get("tool_calls") or [])
        for s in stop or []:
            text = text.split(s)[0]
        tool_calls = [ToolCall(c.get("id", f"call_{len(self.calls)}_{i}"), c["name"],
                               c["arguments"] if isinstance(c["arguments"], str)
                               else json.dumps(c["arguments"]))
                      for i, c in enumerate(calls)]
        finish = None if isinstance(reply, str) else reply.get("finish_reason")
        return Completion(text, tool_calls, finish or ("tool_calls" if tool_calls else "stop"),
                          Usage(len(prompt) // 4, len(text) // 4), None, self.id)


@hookimpl
def register_models(register: Any) -> None:
    register("fake", FakeModel)
