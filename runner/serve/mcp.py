"""`runner mcp FOLDER`: every agent spec under a folder served as one MCP tool, over stdio or
streamable HTTP, on the official SDK's low-level server.

A tool's description is the spec's `description`; its arguments are `input` (an agent) or
the chain's named inputs; each step of a run is sent as a progress notification; the result
is the answer, with the structured answer as `structuredContent` when the spec has an
output schema. A run that fails is an `isError` result saying how it ended. Specs that are
only bases of others (`extends:`) and agent test files are not served.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from .. import events as ev
from ..errors import SpecError
from ..result import as_text
from ..spec import AgentSpec
from .agents import Served, close_all, input_schema, is_loopback, load_agents, run_input

__all__ = ["Served", "load_agents", "build_server", "serve_stdio", "serve_http",
           "input_schema", "is_loopback", "TOKEN_ENV"]

TOKEN_ENV = "RUNNER_MCP_TOKEN"
"""The bearer token `--http` requires when it listens beyond loopback."""
MAX_PROGRESS_MESSAGE = 200


def _tool(name: str, spec: AgentSpec) -> Any:
    from mcp.types import Tool, ToolAnnotations

    schema = spec.output.json_schema if spec.output is not None else None
    return Tool(name=name, description=spec.description or f"the {spec.name} agent",
                input_schema=input_schema(spec),
                output_schema=schema if isinstance(schema, dict) and schema.get(
                    "type") == "object" else None,
                annotations=ToolAnnotations(title=name, open_world_hint=True))


def build_server(served: list[Served]) -> Any:
    """The SDK's low-level Server, listing and calling the served agents."""
    import jsonschema
    from mcp.server import Server
    from mcp.types import CallToolResult, ListToolsResult, TextContent

    by_name = {s.name: s for s in served}
    tools = {s.name: _tool(s.name, s.agent.spec) for s in served}
    checks = {s.name: jsonschema.Draft202012Validator(s.input_schema) for s in served}

    def failed(text: str) -> Any:
        return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)

    async def list_tools(ctx: Any, params: Any) -> Any:
        return ListToolsResult(tools=list(tools.values()))

    async def call_tool(ctx: Any, params: Any) -> Any:
        s = by_name.get(params.name)
        if s is None:
            return failed(f"no agent named {params.name!r}; agents: {', '.join(by_name)}")
        arguments = params.arguments or {}
        problems = [e.message for e in checks[s.name].iter_errors(arguments)][:5]
        if problems:
            return failed(f"invalid arguments for {s.name}: {'; '.join(problems)}")
        spec = s.agent.spec
        run = s.agent.start(run_input(spec, arguments))
        sent = 0  # progress must grow with every notification: parallel calls share a step
        async for event in run.events():
            message = _progress(event)
            if message is not None:
                sent += 1
                await ctx.session.report_progress(float(sent), None,
                                                  message[:MAX_PROGRESS_MESSAGE])
        result = run.result
        if not result.ok:
            return failed(f"{s.name} ended with {result.status}: {result.error}"
                          + (f"\npartial answer: {as_text(result.answer)}" if result.answer
                             else ""))
        answer = result.answer
        structured = answer if isinstance(answer, dict) and tools[s.name].output_schema else None
        text = json.dumps(answer, ensure_ascii=False) if structured is not None else \
            as_text(answer)
        return CallToolResult(content=[TextContent(type="text", text=text)],
                              structured_content=structured)

    from ..mcp_client import runner_version

    return Server("yaml-agent-runner", version=runner_version(),
                  instructions="Each tool is an agent declared in YAML; call it with its input.",
                  on_list_tools=list_tools, on_call_tool=call_tool)


def _progress(event: ev.Event) -> str | None:
    """The progress message of an event that ends a step, or None."""
    if isinstance(event, ev.Observed):
        what = f"{event.tool} " + ("failed" if event.error else "answered") if event.tool \
            else "the reply had no usable action"
        return f"step {event.step}: {what}"
    if isinstance(event, ev.FinalAnswer):
        return f"step {event.step}: final answer"
    return None


async def serve_stdio(served: list[Served]) -> None:
    """Serve over this process's stdin and stdout until stdin closes."""
    from mcp.server.stdio import stdio_server

    server = build_server(served)
    try:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
    finally:
        await close_all(served)


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (or `:PORT`, on 127.0.0.1) for --http."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SpecError(f"--http takes HOST:PORT (such as 127.0.0.1:8931), not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve_http(served: list[Served], host: str, port: int, token: str | None) -> None:
    """Serve streamable HTTP at http://HOST:PORT/mcp until interrupted. Beyond loopback a
    bearer token is required on every request."""
    import uvicorn

    server = build_server(served)
    app = server.streamable_http_app(host=host)
    if token:
        app = _require_token(app, token)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    try:
        await uvicorn.Server(config).serve()
    finally:
        await close_all(served)


def _require_token(app: Any, token: str) -> Any:
    """An ASGI wrapper answering 401 to any HTTP request without `Authorization: Bearer TOKEN`."""
    expected = f"Bearer {token}".encode()

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or ()).get(b"authorization", b"")
            if not hmac.compare_digest(given, expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": json.dumps(
                    {"error": f"a bearer token is required (the value of ${TOKEN_ENV})"}
                ).encode()})
                return
        await app(scope, receive, send)

    return guarded
