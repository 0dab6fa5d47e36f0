"""Tools: the interface, turning a typed function into a tool, argument validation, and
running a call with a timeout and a bounded, printable observation.

A sync tool runs in a worker thread, or, with `isolation="process"` (`isolation: process` on
a spec's tools entry), in a separate process killed with its children at the timeout
(`runner.isolated`): code that holds the GIL in C would otherwise stall the event loop."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import os
import queue
import re
import signal
import threading
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Callable, Literal, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .errors import ToolError, ToolTimeout
from .parsing import MAX_DEPTH, TOO_DEEP, RawArguments, decode_arguments

__all__ = ["Tool", "ToolFactory", "ToolContext", "tool", "as_factory", "NoOptions",
           "SchemaArguments", "GROUP_NAME",
           "parse_arguments", "run_tool", "format_output", "run_process", "kill_process_groups",
           "too_deep", "cut_deep", "MAX_ARGUMENT_DEPTH", "Isolation"]

TRUNCATION_MARKER = "\n[... output truncated: {dropped} of {total} characters dropped ...]"
MAX_ARGUMENT_DEPTH = MAX_DEPTH  # one bound for native calls and text inputs
"""Arguments nested deeper are refused: json, pydantic, redaction and the trace writer all
recurse, and a few hundred levels of brackets would overflow them."""
Isolation = Literal["thread", "process"]
GROUP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
"""The name of a group of tools (an MCP server's), which prefixes their names: providers
take only letters, digits, `_` and `-` in a function name."""


class NoOptions(BaseModel):
    """A tool that takes no options in the spec."""

    model_config = ConfigDict(extra="forbid", strict=True)


class SchemaArguments(BaseModel):
    """The arguments of a tool described by a JSON Schema (`Tool.parameters`), checked
    against it by parse_arguments."""

    model_config = ConfigDict(extra="allow")


@dataclass
class ToolContext:
    """What a running tool may use: the run's id and step, the project root, how deep the
    agent is, the run's budget (a sub-agent draws from it) and the run's event stream."""

    run_id: str = ""
    root: Any = None
    depth: int = 0
    budget: Any = None
    """The calling run's Budget."""
    forward: Callable[[Any], None] | None = None
    """Passes an event (a sub-agent's) to whoever streams the calling run."""
    step: int = 0
    """The calling run's step."""
    emit: Callable[[Any], None] | None = None
    """Sends an event of the tool's own (progress) to the run's sinks and listener."""
    run: Any = None
    """The calling Run, for tools that start sub-agents' runs on its behalf."""


@dataclass
class Tool:
    """A callable the model may use: a name, a description and a pydantic argument schema."""

    name: str
    description: str
    args: type[BaseModel]
    fn: Callable[..., Any]
    timeout_s: float | None = None
    context_param: str | None = None
    """The parameter that receives the ToolContext (hidden from the model), if any."""
    confirm: bool = False
    """Side effects worth a person's yes: asked before each call (see loop.approve)."""
    idempotent: bool = True
    """False: a call cut short by a crash is not re-run on resume; the model is told instead."""
    max_output_chars: int | None = None
    """Longer output is cut to this size (default: the spec's loop.max_observation_chars)."""
    isolation: Isolation = "thread"
    """"process": each call runs in a fresh process, killed (with its children) at the timeout.
    Its function must be importable (module level), its arguments and result must pickle, and
    its ToolContext carries no budget or forward."""
    parameters: dict[str, Any] | None = None
    """A JSON Schema for the arguments, given as such (an MCP tool's), instead of `args`: it
    is passed to the model unchanged and arguments are validated against it."""
    meta: dict[str, Any] = field(default_factory=dict)
    """What `runner tools` shows besides the schema (an MCP tool: its server, its own name,
    annotations, the hash of its definition)."""
    _validator: Any = field(default=None, init=False, repr=False, compare=False)

    def schema(self) -> dict[str, Any]:
        """The OpenAI-style function schema passed to native tool calling."""
        params = self.parameters
        if params is None:
            params = self.args.model_json_schema()
            params.pop("title", None)
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": params}}

    def fields(self) -> dict[str, str | None]:
        """The argument names, each with its description."""
        if self.parameters is not None:
            props = self.parameters.get("properties")
            return {str(n): (p.get("description") if isinstance(p, dict) else None)
                    for n, p in (props.items() if isinstance(props, dict) else ())}
        return {n: f.description for n, f in self.args.model_fields.items()}

    def input_hint(self) -> str:
        """A short description of the input for text ReAct prompts."""
        fields = self.fields()
        if not fields:
            return "nothing (leave the input empty)"
        if len(fields) == 1:
            (name, description), = fields.items()
            return description or name
        return "JSON object with " + ", ".join(
            f"{n}" + (f" ({d})" if d else "") for n, d in fields.items())


@dataclass
class ToolFactory:
    """A tool configured by spec options (`- search: {path: kb/}`): build(options, ctx)."""

    name: str
    description: str
    options: type[BaseModel]
    build: Callable[[Any, Any], Tool | list[Tool]]
    """(options, BuildContext) -> the tool, or the tools, one spec entry gives (`files` gives
    read_file, list_files and write_file)."""
    prepare: Callable[[Any, Any], Any] | None = None
    """(options, BuildContext) -> anything, called for every entry of an agent before any is
    built, so that slow starts overlap (MCP servers); build finds it in `ctx.prepared`."""
    named_group: bool = False
    """The entry's `name` names the group of tools it gives (an MCP server, the prefix of its
    tools' names) and is required, instead of renaming one tool."""


def as_factory(obj: Tool | ToolFactory | Callable[..., Any]) -> ToolFactory:
    """Normalise what a plugin registers into a ToolFactory."""
    if isinstance(obj, ToolFactory):
        return obj
    if not isinstance(obj, Tool):
        obj = tool(obj)
    fixed = obj
    # A copy per build: a spec entry's timeout_s or name must not leak into other agents.
    return ToolFactory(fixed.name, fixed.description, NoOptions, lambda _opts, _ctx: replace(fixed))


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None,
         description: str | None = None, timeout_s: float | None = None,
         confirm: bool = False, idempotent: bool = True,
         isolation: Isolation = "thread") -> Any:
    """Turn a typed function (sync or async) into a Tool; its signature becomes the schema.

    A parameter annotated `ToolContext` receives the run's context and is hidden from the model.
    `isolation="process"` runs each call in a separate process that is killed at the timeout,
    for CPU-bound code that may hold the GIL (see Tool.isolation).
    """

    if isolation not in get_args(Isolation):
        raise ValueError(f"isolation must be one of {', '.join(get_args(Isolation))}, "
                         f"not {isolation!r}")

    def wrap(f: Callable[..., Any]) -> Tool:
        hints = get_type_hints(f, include_extras=True)
        fields: dict[str, Any] = {}
        context_param = None
        for pname, param in inspect.signature(f).parameters.items():
            ann = hints.get(pname, str)
            if ann is ToolContext:
                context_param = pname
                continue
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[pname] = (_described(ann), default)
        model = create_model(f"{f.__name__}_args", __config__=ConfigDict(extra="forbid"), **fields)
        doc = inspect.getdoc(f) or ""
        return Tool(name or f.__name__, description or doc.split("\n\n")[0].replace("\n", " "),
                    model, f, timeout_s, context_param, confirm, idempotent,
                    isolation=isolation)

    return wrap(fn) if fn is not None else wrap


def _described(ann: Any) -> Any:
    """`Annotated[int, "the count"]`: a bare string in the metadata becomes the description."""
    if get_origin(ann) is Annotated:
        base, *meta = get_args(ann)
        if any(isinstance(m, str) for m in meta):
            text = next(m for m in meta if isinstance(m, str))
            rest = [m for m in meta if not isinstance(m, str)]
            return Annotated[(base, *rest, Field(description=text))]  # type: ignore[valid-type]
    return ann


def parse_arguments(t: Tool, raw: str | dict[str, Any] | None) -> BaseModel:
    """Validate the model's input for `t`; raise ToolError with advice the model can act on.

    Arguments are JSON or unambiguous near-JSON (single quotes, Python literals, a trailing
    comma), read by a literal parser and never evaluated. A one-field tool also takes plain
    text, unless the text is evidently a broken JSON object for its fields.
    """
    fields = t.fields()
    data: Any = raw
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("{") or isinstance(raw, RawArguments):
            try:
                data = decode_arguments(text)  # ToolError past MAX_DEPTH levels
            except json.JSONDecodeError as exc:
                if len(fields) != 1 or isinstance(raw, RawArguments) or _names_a_field(
                        text, fields):
                    raise ToolError(f"the arguments are not valid JSON ({exc.msg} at column "
                                    f"{exc.colno}); send a JSON object with double-quoted keys, "
                                    f"with: {', '.join(fields)}") from None
                data = text
        if not isinstance(data, dict):
            if len(fields) == 1:
                only, = fields
                data = {only: _strip_quotes(text) if _takes_text(t, only) else
                        _literal(t, text)}
            elif not fields:
                data = {}
            else:
                raise ToolError(f"{t.name} takes a JSON object with: {', '.join(fields)}")
    # text was bounded as it was decoded; data handed over as a dict is walked once, here,
    # before pydantic and everything after it recurse into it
    if not isinstance(raw, str) and too_deep(data):
        raise ToolError(TOO_DEEP)
    takes = ", ".join(fields) or "no arguments"
    if t.parameters is not None:
        problems = _schema_problems(t, data or {})
        if problems:
            raise ToolError(f"invalid arguments for {t.name}: {problems} ({t.name} takes: "
                            f"{takes})")
        return SchemaArguments.model_validate(data or {})
    try:
        return t.args.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}"
                             for e in exc.errors(include_input=False, include_url=False))
        raise ToolError(f"invalid arguments for {t.name}: {problems} ({t.name} takes: {takes})"
                        ) from None


def _takes_text(t: Tool, name: str) -> bool:
    if t.parameters is None:
        return t.args.model_fields[name].annotation is str
    prop = (t.parameters.get("properties") or {}).get(name)
    return not isinstance(prop, dict) or prop.get("type") in (None, "string")


def _literal(t: Tool, text: str) -> Any:
    """Plain text for a one-field schema tool whose field is not a string: a JSON literal if
    it reads as one (`5`, `true`), else the text (which the schema then refuses)."""
    if t.parameters is None:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _schema_problems(t: Tool, data: Any) -> str:
    """What is wrong with `data` for `t.parameters` (empty: nothing), at most five problems."""
    import jsonschema

    validator = t._validator
    if validator is None:
        validator = t._validator = jsonschema.Draft202012Validator(t.parameters or {})
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))[:5]
    return "; ".join(f"{'.'.join(map(str, e.absolute_path)) or 'input'}: {e.message[:200]}"
                     for e in errors)


def too_deep(value: Any, limit: int = MAX_ARGUMENT_DEPTH) -> bool:
    """Whether lists and dicts in `value` nest deeper than `limit` (iterative: no recursion)."""
    if not isinstance(value, (dict, list, tuple)):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list, tuple)))
    return False


def cut_deep(value: Any, limit: int = MAX_ARGUMENT_DEPTH + 1) -> Any:
    """`value` with containers below `limit` levels replaced by "...": still too deep, but
    safe to show, serialise and store (it recurses `limit` levels at most)."""
    if not isinstance(value, (dict, list, tuple)):
        return value
    if limit <= 0:
        return "..."
    if isinstance(value, dict):
        return {k: cut_deep(v, limit - 1) for k, v in value.items()}
    return [cut_deep(v, limit - 1) for v in value]


def _names_a_field(text: str, fields: dict[str, Any]) -> bool:
    """Whether `text` looks like a JSON object keyed by one of the fields (`{'expr': ...`)."""
    return any(re.search(rf"""^\{{\s*["']?{re.escape(name)}["']?\s*:""", text) for name in fields)


def _strip_quotes(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"`":
        return text[1:-1]
    return text


class _DaemonWorkers:
    """Threads for sync tools. Daemon threads, unlike asyncio's default executor, so a tool
    that hangs past its timeout cannot keep `asyncio.run()` or the interpreter from exiting.

    Every job reserves an idle thread or starts one, so a hung tool never delays another call
    (past `max_threads` jobs wait their turn).
    """

    def __init__(self, max_threads: int = 64) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = self._idle = self._waiting = 0
        self._max = max_threads

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif self._threads < self._max:
                self._threads += 1
                threading.Thread(target=self._work, name=f"runner-tool-{self._threads}",
                                 daemon=True).start()
            else:
                self._waiting += 1
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            self._jobs.get()()
            with self._lock:
                if self._waiting:
                    self._waiting -= 1
                else:
                    self._idle += 1


_workers = _DaemonWorkers()


def _in_thread(fn: Callable[..., Any], kwargs: dict[str, Any]) -> asyncio.Future[Any]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    ctx = contextvars.copy_context()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            (future.set_result if ok else future.set_exception)(value)

    def job() -> None:
        try:
            result = ctx.run(fn, **kwargs)
        except BaseException as exc:  # delivered to the awaiting task, not raised here
            outcome = (False, exc)
        else:
            outcome = (True, result)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the event loop closed while the tool was still running
            pass

    _workers.submit(job)
    return future


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))


async def _call(t: Tool, kwargs: dict[str, Any]) -> Any:
    try:
        if t.isolation == "process":
            from .isolated import in_process  # only a tool that asks for it pays the import

            return await in_process(t.fn, kwargs)
        result = await (t.fn(**kwargs) if _is_async(t.fn) else _in_thread(t.fn, kwargs))
        if inspect.isawaitable(result):
            result = await result
        return result
    except SystemExit as exc:  # argparse and friends: a tool failure, not the process ending
        raise ToolError(f"SystemExit: {exc.code}") from None


async def run_tool(t: Tool, args: BaseModel, ctx: ToolContext, timeout_s: float) -> Any:
    """Call the tool under a deadline; sync tools run in a worker thread, isolated tools in
    their own process."""
    kwargs = dict(args)
    if t.context_param:  # a budget and an event callback cannot cross to another process
        kwargs[t.context_param] = ctx if t.isolation != "process" else ToolContext(
            ctx.run_id, ctx.root, ctx.depth)
    try:
        return await asyncio.wait_for(_call(t, kwargs), timeout_s)
    except asyncio.TimeoutError:
        raise ToolTimeout(f"tool {t.name} timed out after {timeout_s:g}s") from None


def format_output(value: Any, max_chars: int) -> str:
    """Any tool result as text: JSON for data, bytes decoded, cut to max_chars with a marker.

    Never raises: whatever a tool returns, the model gets some text.
    """
    try:
        text = _as_text(value)
    except Exception as exc:  # a __repr__ or model_dump that raises
        text = f"<unprintable {type(value).__name__}: {type(exc).__name__}>"
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    if len(text) > max_chars:
        marker = TRUNCATION_MARKER.format(dropped=len(text), total=len(text))  # longest form
        keep = max_chars - len(marker) if max_chars > 2 * len(marker) else max_chars
        text = text[:keep] + TRUNCATION_MARKER.format(dropped=len(text) - keep, total=len(text))
    return text


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    try:
        return json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def renamed(t: Tool, alias: str | None, description: str | None) -> Tool:
    """The same tool under the name and description a spec entry gives it."""
    if not alias and not description:
        return t
    return replace(t, name=alias or t.name, description=description or t.description)


_process_groups: set[int] = set()


async def run_process(args: list[str], *, input: str | None = None, cwd: Any = None,
                      env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a command for a tool: (exit code, stdout and stderr as text). It runs in its own
    process group, and the whole group (children included) is killed when the command ends,
    when the tool times out or is cancelled, and when the runner exits: no orphans."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=cwd, env=env,
        start_new_session=True)
    _process_groups.add(proc.pid)
    try:
        out, _ = await proc.communicate(input.encode() if input is not None else None)
        return proc.returncode or 0, out.decode("utf-8", errors="replace")
    finally:
        _kill_group(proc.pid)
        _process_groups.discard(proc.pid)
        if proc.returncode is None:
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), 1.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass


def kill_process_groups() -> None:
    """Kill every process group that run_process started and that is still alive."""
    for pgid in list(_process_groups):
        _kill_group(pgid)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
