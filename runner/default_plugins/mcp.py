"""The `mcp` tool entry: every tool of an MCP server, from one line of YAML.

    - mcp: {name: time, command: mcp-server-time, args: ["--local-timezone", "UTC"]}
    - mcp: {name: docs, url: "http://127.0.0.1:8931/mcp", headers: {Authorization: "Bearer ${T}"},
            include: [search_docs, get_page]}

`name` names the server and prefixes its tools (`docs__search_docs`). The servers of an agent
start together when it is built (`runner.mcp_client` keeps their sessions); a lock file next
to the spec (`runner tools SPEC --lock`) pins every tool definition, and a server whose tools
changed since is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from .. import events as ev
from ..errors import SpecErrors, ToolError, did_you_mean
from ..hookspecs import hookimpl
from ..mcp_client import Connection, ServerConfig, definition_hash, describe_result
from ..spec import CommonToolOptions, shown_path
from ..tools import SchemaArguments, Tool, ToolContext, ToolFactory, too_deep

__all__ = ["MCPOptions", "lock_path", "read_lock", "write_lock", "LOCK_SUFFIX"]

MAX_NAME = 64
"""The longest function name every big provider takes (OpenAI's limit; Anthropic takes 128)."""
MAX_DESCRIPTION = 4000
"""A longer description is cut for the model (`runner tools` shows it whole)."""
MAX_RESULT_CHARS = 1_000_000
"""Most characters of one result gathered before the observation is cut to size."""
LOCK_SUFFIX = ".tools.lock"
CONTEXT = "_runner_context_"
TEMPLATE_MARKS = ("{{", "{%", "{#")


ToolSettings = create_model(
    "ToolSettings", __config__=ConfigDict(extra="forbid", strict=True),
    __doc__="Settings of one tool of the server, over the entry's own: the common keys that "
            "apply to a single tool, with their types, bounds and descriptions.",
    **{key: (field.annotation, field) for key, field in CommonToolOptions.model_fields.items()
       if key in ("confirm", "timeout_s", "idempotent", "max_output_chars")})


class MCPOptions(BaseModel):
    """An MCP server: a command it is started with (stdio) or a URL (streamable HTTP)."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)
    spec_paths: ClassVar[tuple[str, ...]] = ("cwd",)

    command: str | None = None
    """The server's executable, started over stdio: a literal string of the spec (values come
    from ${VAR} when the spec loads), never a template and never from a model."""
    args: list[str] = []
    """Its arguments, literal as `command`."""
    env: dict[str, str] | list[str] = {}
    """Environment for a stdio server besides the safe set (HOME, LOGNAME, PATH, SHELL, TERM,
    USER, LANG, LC_ALL, LC_CTYPE, TMPDIR): a mapping of values (`${VAR}` allowed), or a list
    of variable names passed through from the runner's environment."""
    cwd: str | None = None
    """Working directory of a stdio server, relative to the spec (default: the project root)."""
    url: str | None = None
    """The server's streamable HTTP endpoint (`http://127.0.0.1:8931/mcp`)."""
    headers: dict[str, str] = {}
    """HTTP headers sent with every request (`Authorization: "Bearer ${TOKEN}"`)."""
    transport: Literal["streamable-http", "sse"] = "streamable-http"
    """For a url: streamable HTTP, or the older HTTP+SSE transport (`sse`)."""
    include: list[str] | None = None
    """Only these tools of the server (its own names); default: all."""
    exclude: list[str] = []
    """Leave these tools of the server out."""
    start_timeout_s: float = Field(30.0, gt=0, le=600)
    """Deadline for the server to start and list its tools."""
    tools: dict[str, ToolSettings] = {}
    """Settings for single tools, by their own names (`{write_file: {confirm: true}}`)."""

    @field_validator("command", "args", "url", "cwd")
    @classmethod
    def _literal(cls, value: Any) -> Any:
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and any(m in text for m in TEMPLATE_MARKS):
                raise ValueError("is literal and never rendered as a template: remove the "
                                 "{{ }} (use ${VAR} to take a value from the environment)")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> MCPOptions:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either command: (a server started over stdio) or url: (a "
                             "streamable HTTP server)")
        if self.url is not None:
            if not re.match(r"^https?://", self.url):
                raise ValueError("url must start with http:// or https://")
            if self.args or self.env or self.cwd:
                raise ValueError("args, env and cwd are for a server started with command:")
        elif self.headers or self.transport != "streamable-http":
            raise ValueError("headers and transport are for a server reached by url:")
        if self.include is not None and self.exclude:
            raise ValueError("give include or exclude, not both")
        return self


# ---------------------------------------------------------------------------- building


def _prepare(options: MCPOptions, ctx: Any) -> tuple[Connection, Any]:
    """Start the server (on the MCP host loop) without waiting for it."""
    ref, src = ctx.ref, ctx.spec.source
    name = ref.common.name  # checked against GROUP_NAME when the spec was resolved
    for key in ("description", "isolation"):
        if getattr(ref.common, key) is not None:
            raise src.error(ref.key + (key,), f"an mcp entry takes no {key} (its tools have "
                            f"their own{' and run on the server' if key == 'isolation' else ''})")
    env = options.env
    if isinstance(env, list):
        environ = src.env if src.env is not None else os.environ
        missing = [v for v in env if v not in environ]
        if missing:
            raise src.error(ref.key + ("env",), f"env names {', '.join(missing)}, which "
                            f"{'is' if len(missing) == 1 else 'are'} not set")
        env = {v: environ[v] for v in env}
    cwd = str(ctx.resolve(options.cwd)) if options.cwd else str(src.root)
    config = ServerConfig(name, options.command, list(options.args), dict(env), cwd,
                          options.url, dict(options.headers), options.start_timeout_s,
                          f"{shown_path(src.path)} {'tools[' + str(ref.key[1]) + ']'}",
                          sse=options.transport == "sse")
    connection = Connection(config)
    ctx.on_close(connection.close)
    return connection, connection.start()


def _build(options: MCPOptions, ctx: Any) -> list[Tool]:
    connection, started = ctx.prepared
    listed = started.result(options.start_timeout_s + 60)  # ToolServerError names the server
    src, ref = ctx.spec.source, ctx.ref
    server = ref.common.name
    by_name = {t.name: t for t in listed}
    problems = [src.error(ref.key + ("include",), f"server {server!r}: tool {n!r} can only be "
                          f"called as a task (taskSupport: required), which the runner does "
                          f"not do") for n in options.include or () if n in by_name
                and _task_only(by_name[n])]
    for key, names in (("include", options.include or []), ("exclude", options.exclude),
                       ("tools", list(options.tools))):
        for n in names:
            if n not in by_name:
                problems.append(src.error(ref.key + (key,), f"server {server!r} lists no tool "
                                          f"{n!r}{did_you_mean(n, by_name)}; it lists: "
                                          f"{', '.join(by_name) or '(none)'}"))
    if problems:
        raise SpecErrors(problems)
    chosen = [t for t in listed if (options.include is None or t.name in options.include)
              and t.name not in options.exclude and not _task_only(t)]
    if ctx.agent.tool_lock:
        _check_lock(ctx, server, chosen)
    tools, names = [], {}
    for t in chosen:
        tool = _tool(connection, server, t, options.tools.get(t.name), ref.common, ctx)
        if tool.name in names:
            raise src.error(ref.key, f"server {server!r} lists tools {names[tool.name]!r} and "
                            f"{t.name!r}, which both become {tool.name!r}; leave one out with "
                            f"exclude:")
        names[tool.name] = t.name
        tools.append(tool)
    return tools


def _task_only(t: Any) -> bool:
    """A tool the server runs only as a task (MCP tasks), which the runner cannot call: it is
    left out, as a tool that can only fail should never be offered to the model."""
    execution = getattr(t, "execution", None)
    return getattr(execution, "task_support", None) == "required"


def tool_name(server: str, name: str) -> str:
    """`server__name`, with what providers refuse in a function name replaced by `_` and a
    name too long cut and told apart by a hash."""
    full = f"{server}__{re.sub(r'[^A-Za-z0-9_-]', '_', name)}"
    if len(full) > MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        full = f"{full[:MAX_NAME - 9]}_{digest}"
    return full


def _tool(connection: Connection, server: str, t: Any, own: Any,
          common: Any, ctx: Any) -> Tool:
    src, ref = ctx.spec.source, ctx.ref
    schema = t.input_schema if isinstance(t.input_schema, dict) else {}
    problem = _schema_problem(schema)
    if problem:
        raise src.error(ref.key, f"server {server!r} gives tool {t.name!r} an unusable input "
                        f"schema ({problem}); leave it out with exclude: [{t.name}]")
    if CONTEXT in (schema.get("properties") or {}):
        raise src.error(ref.key, f"server {server!r}: tool {t.name!r} has an argument named "
                        f"{CONTEXT}, which the runner keeps for itself; leave it out with "
                        f"exclude: [{t.name}]")
    name = tool_name(server, t.name)
    full = t.description or t.title or ""
    description = full if len(full) <= MAX_DESCRIPTION else (
        full[:MAX_DESCRIPTION] + " [description cut: `runner tools` shows all of it]")
    hints = t.annotations
    own_name = t.name

    async def call(**arguments: Any) -> str:
        context: ToolContext = arguments.pop(CONTEXT)

        emit = context.emit

        def progress(p: float, total: float | None, message: str | None) -> None:
            emit(ev.ToolProgress(context.run_id, context.step, name, p, total,  # type: ignore
                                 None if message is None else str(message)[:500]))

        # no listener, no progress token: the server then sends no notifications
        result = await connection.call(own_name, arguments, progress if emit else None)
        text = describe_result(result, tool.max_output_chars or MAX_RESULT_CHARS)
        if result.is_error:
            raise ToolError(text or "the tool reported an error")
        return text

    def setting(key: str, default: Any) -> Any:
        for source in (own, common):
            value = getattr(source, key, None) if source is not None else None
            if value is not None:
                return value
        return default

    readonly = bool(hints and (hints.read_only_hint or hints.idempotent_hint))
    tool = Tool(name, description, SchemaArguments, call,
                timeout_s=setting("timeout_s", None), context_param=CONTEXT,
                confirm=setting("confirm", False), idempotent=setting("idempotent", readonly),
                max_output_chars=setting("max_output_chars", None), parameters=schema,
                meta={"server": server, "server_tool": t.name, "description": full,
                      "annotations": hints.model_dump(mode="json", by_alias=True,
                                                      exclude_none=True) if hints else {},
                      "hash": definition_hash(t), "transport": _transport(connection)})
    return tool


def _transport(connection: Connection) -> str:
    c = connection.config
    if c.url:
        return f"{'sse' if c.sse else 'http'} {c.url}"
    return "stdio " + " ".join([c.command or "", *c.args])


def _schema_problem(schema: dict[str, Any]) -> str | None:
    import jsonschema

    if schema.get("type", "object") != "object":
        return "its type is not object"
    if too_deep(schema):
        return "it nests too deep"
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"not a valid JSON Schema: {exc.message[:200]}"
    return None


# ---------------------------------------------------------------------------- the lock


def lock_path(spec_path: Path) -> Path:
    """`agents/x.yaml` -> `agents/x.tools.lock`."""
    return spec_path.with_name(spec_path.stem + LOCK_SUFFIX)


def read_lock(spec_path: Path) -> dict[str, dict[str, str]] | None:
    """server -> tool -> definition hash, or None when the spec has no lock file."""
    path = lock_path(spec_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ToolError(f"{shown_path(path)}: cannot read the tool lock ({exc}); write it again "
                        f"with `runner tools {shown_path(spec_path)} --lock`") from None
    servers = data.get("servers") if isinstance(data, dict) else None
    if not isinstance(servers, dict) or not all(
            isinstance(v, dict) and all(isinstance(h, str) for h in v.values())
            for v in servers.values()):
        raise ToolError(f"{shown_path(path)}: not a tool lock (no servers mapping); write it "
                        f"again with `runner tools {shown_path(spec_path)} --lock`")
    return servers


def write_lock(spec_path: Path, tools: list[Tool]) -> Path:
    """Record the definition hash of every MCP tool (by server) next to the spec."""
    servers: dict[str, dict[str, str]] = {}
    for t in tools:
        if "hash" in t.meta:
            servers.setdefault(t.meta["server"], {})[t.meta["server_tool"]] = t.meta["hash"]
    path = lock_path(spec_path)
    text = json.dumps({"version": 1, "servers": servers}, indent=2, sort_keys=True) + "\n"
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _check_lock(ctx: Any, server: str, tools: list[Any]) -> None:
    src, ref = ctx.spec.source, ctx.ref
    lock = read_lock(src.path)
    if lock is None:
        return
    accept = (f"review it with `runner tools {shown_path(src.path)}`, then accept it with "
              f"`runner tools {shown_path(src.path)} --lock`")
    where = shown_path(lock_path(src.path))
    locked = lock.get(server)
    if locked is None:
        raise src.error(ref.key, f"server {server!r} is not in {where}; {accept}")
    now = {t.name: definition_hash(t) for t in tools}
    changed = sorted(n for n in now if n in locked and now[n] != locked[n])
    added = sorted(set(now) - set(locked))
    gone = sorted(set(locked) - set(now))
    if changed or added or gone:
        what = "; ".join(part for part in (
            f"changed: {', '.join(changed)}" if changed else "",
            f"new: {', '.join(added)}" if added else "",
            f"gone: {', '.join(gone)}" if gone else "") if part)
        raise src.error(ref.key, f"server {server!r}: its tool definitions differ from "
                        f"{where} ({what}); {accept}")


@hookimpl
def register_tools(register: Any) -> None:
    register(ToolFactory("mcp", "Every tool of an MCP server (stdio or streamable HTTP).",
                         MCPOptions, _build, prepare=_prepare, named_group=True))
