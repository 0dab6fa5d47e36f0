"""Tools: the interface, turning a typed function into a tool, argument validation, and
running a call with a timeout and a bounded, printable observation."""

from __future__ import annotations

import asyncio
import inspect
import json
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from .errors import ToolError, ToolTimeout

__all__ = ["Tool", "ToolFactory", "ToolContext", "tool", "as_factory", "NoOptions",
           "parse_arguments", "run_tool", "format_output"]

TRUNCATION_MARKER = "\n[... output truncated: {dropped} of {total} characters dropped ...]"


class NoOptions(BaseModel):
    """A tool that takes no options in the spec."""

    model_config = ConfigDict(extra="forbid", strict=True)


@dataclass
class ToolContext:
    """What a running tool may use: the run's id, the spec's folder, the parent run's state."""

    run_id: str = ""
    root: Any = None
    depth: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Tool:
    """A callable the model may use: a name, a description and a pydantic argument schema."""

    name: str
    description: str
    args: type[BaseModel]
    fn: Callable[..., Any]
    timeout_s: float | None = None
    takes_context: bool = False

    def schema(self) -> dict[str, Any]:
        """The OpenAI-style function schema passed to native tool calling."""
        params = self.args.model_json_schema()
        params.pop("title", None)
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": params}}

    def input_hint(self) -> str:
        """A short description of the input for text ReAct prompts."""
        fields = self.args.model_fields
        if len(fields) == 1:
            (name, f), = fields.items()
            return f.description or name
        return "JSON object with " + ", ".join(
            f"{n}" + (f" ({f.description})" if f.description else "") for n, f in fields.items())


@dataclass
class ToolFactory:
    """A tool configured by spec options (`- search: {path: kb/}`): build(options, ctx) -> Tool."""

    name: str
    description: str
    options: type[BaseModel]
    build: Callable[[Any, Any], Tool]


def as_factory(obj: Tool | ToolFactory | Callable[..., Any]) -> ToolFactory:
    """Normalise what a plugin registers into a ToolFactory."""
    if isinstance(obj, ToolFactory):
        return obj
    if not isinstance(obj, Tool):
        obj = tool(obj)
    fixed = obj
    return ToolFactory(fixed.name, fixed.description, NoOptions, lambda _opts, _ctx: fixed)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None,
         description: str | None = None, timeout_s: float | None = None) -> Any:
    """Turn a typed function (sync or async) into a Tool; its signature becomes the schema.

    A parameter annotated `ToolContext` receives the run's context and is hidden from the model.
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        hints = get_type_hints(f, include_extras=True)
        fields: dict[str, Any] = {}
        takes_context = False
        for pname, param in inspect.signature(f).parameters.items():
            ann = hints.get(pname, str)
            if ann is ToolContext:
                takes_context = True
                continue
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[pname] = (ann, default)
        model = create_model(f"{f.__name__}_args", __config__=ConfigDict(extra="forbid"), **fields)
        doc = inspect.getdoc(f) or ""
        return Tool(name or f.__name__, description or doc.split("\n\n")[0].replace("\n", " "),
                    model, f, timeout_s, takes_context)

    return wrap(fn) if fn is not None else wrap


def parse_arguments(t: Tool, raw: str | dict[str, Any] | None) -> BaseModel:
    """Validate the model's input for `t`; raise ToolError with advice the model can act on."""
    fields = t.args.model_fields
    data: Any = raw
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                if len(fields) != 1:
                    raise ToolError(f"input is not valid JSON ({exc.msg} at column {exc.colno}); "
                                    f"send a JSON object with: {', '.join(fields)}") from None
                data = text
        if not isinstance(data, dict):
            if len(fields) == 1:
                (only, f), = fields.items()
                data = {only: _strip_quotes(text) if f.annotation is str else text}
            elif not fields:
                data = {}
            else:
                raise ToolError(f"{t.name} takes a JSON object with: {', '.join(fields)}")
    try:
        return t.args.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}"
                             for e in exc.errors(include_input=False, include_url=False))
        raise ToolError(f"invalid arguments for {t.name}: {problems}") from None


def _strip_quotes(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"`":
        return text[1:-1]
    return text


async def run_tool(t: Tool, args: BaseModel, ctx: ToolContext, timeout_s: float) -> Any:
    """Call the tool under a deadline; sync tools run in a worker thread."""
    kwargs = dict(args)
    if t.takes_context:
        kwargs[next(n for n, h in get_type_hints(t.fn).items() if h is ToolContext)] = ctx
    if inspect.iscoroutinefunction(t.fn):
        call: Awaitable[Any] = t.fn(**kwargs)
    else:
        call = asyncio.to_thread(t.fn, **kwargs)
    try:
        return await asyncio.wait_for(call, timeout_s)
    except asyncio.TimeoutError:
        raise ToolTimeout(f"tool {t.name} timed out after {timeout_s:g}s") from None


def format_output(value: Any, max_chars: int) -> str:
    """Any tool result as text: JSON for data, bytes decoded, cut to max_chars with a marker."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", errors="replace")
    elif isinstance(value, str):
        text = value
    elif isinstance(value, BaseModel):
        text = value.model_dump_json()
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=repr)
        except (TypeError, ValueError):
            text = repr(value)
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    if len(text) > max_chars:
        marker = TRUNCATION_MARKER.format(dropped=len(text) - max_chars, total=len(text))
        text = text[:max_chars] + marker
    return text


def renamed(t: Tool, alias: str | None, description: str | None) -> Tool:
    """The same tool under the name and description a spec entry gives it."""
    if not alias and not description:
        return t
    return replace(t, name=alias or t.name, description=description or t.description)
