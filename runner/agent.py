"""The composition root: an `Agent` is a resolved spec made runnable.

From what `runner.resolve` hands over (the plugins' factories and the compiled template) it
builds the models (through a tap, when one records or replays), the tools, the memory, the
observers (trace file, OpenTelemetry, the plugins' `on_event`) and the checkpoint store.
It owns the memory, the checkpoint store and its sub-agents: `close()` (or
`async with Agent(...)`) closes each once. Nothing below this module builds these parts or
reads the plugin registry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import events as ev
from .budget import Budget, Clock
from .checkpoints import CheckpointStore, open_store, restore_run
from .errors import SpecError
from .handoff import handoff_tool
from .loop import Run
from .memory import NoMemory
from .models import Model, ModelTap
from .redact import Redactor, env_secrets, redact_text
from .resolve import MAX_AGENT_DEPTH, Resolved, ToolRef, handoff_name, resolve
from .result import RunResult, as_text
from .spec import COMMON_TOOL_KEYS, AgentSpec
from .tools import Tool, renamed

__all__ = ["Agent", "BuildContext", "Approver"]

Approver = Callable[[str, dict[str, Any]], Awaitable[bool]]
Sink = Callable[[ev.Event], None]


class BuildContext:
    """What a ToolFactory gets besides its options: the spec, its entry, the building agent."""

    def __init__(self, spec: AgentSpec, ref: ToolRef, agent: Agent) -> None:
        self.spec, self.ref, self.agent = spec, ref, agent
        self.prepared: Any = None
        """What the factory's `prepare` returned for this entry."""

    def on_close(self, close: Callable[[], Any]) -> None:
        """Have the agent call `close()` when it closes (or fails to build); it may return a
        concurrent future, which the agent waits for."""
        self.agent._closers.append(close)

    def resolve(self, rel: str) -> Path:
        """A path from the tool's options, confined to the project root."""
        return self.spec.source.resolve(rel, self.ref.key)

    def sub_agent(self, resolved: Resolved) -> Agent:
        """An agent one level below the building one, sharing its sinks, tap and memory
        factory, and closed with it."""
        return self.agent.child(resolved)


def _entry(ref: ToolRef) -> str:
    """A tools entry as a person finds it in the spec: `tools[2] (mcp docs)`."""
    where = "tools[" + str(ref.key[1]) + "]" if len(ref.key) > 1 else "an entry"
    return f"{where} ({ref.name}" + (f" {ref.alias}" if ref.alias != ref.name else "") + ")"


class Agent:
    """A spec made runnable: its model(s), tools and memory, shared by all its runs."""

    def __init__(self, spec: AgentSpec | Resolved, *, session: str | None = None,
                 memory: Any = None, depth: int = 0, sinks: list[Sink] | None = None,
                 clock: Clock | None = None, approver: Approver | None = None,
                 checkpoints: CheckpointStore | bool = True, tap: ModelTap | None = None,
                 memory_factory: Callable[[AgentSpec], Any] | None = None,
                 tool_lock: bool = True, run_sessions: bool = False) -> None:
        """`approver(tool, args)` answers for tools marked `confirm` when loop.approve is `ask`;
        `checkpoints`: a store, True for the spec's (top-level agents only), or False;
        `tap` stands between the agent (and its sub-agents) and their models: record, replay;
        `memory_factory(spec)` makes the memory of this agent (unless `memory` is given) and
        of its sub-agents, instead of their specs' backends. Without a session (`session`,
        else the spec's memory.session) runs share nothing: no memory is built or used. The
        agent owns the memory and checkpoint store it is given or builds, and closes them.
        `tool_lock=False` builds MCP tools without checking them against the spec's lock file
        (`runner tools --lock` does, to write it). `run_sessions=True`: each run may name its
        own session (`start(session=...)`, a server's callers), so the memory is built even
        when the agent itself has no session."""
        resolved = spec if isinstance(spec, Resolved) else resolve(spec)
        spec = resolved.spec
        if depth > MAX_AGENT_DEPTH:
            raise SpecError(f"{spec.name}: sub-agents nested deeper than {MAX_AGENT_DEPTH}")
        self.resolved, self.spec, self.depth = resolved, spec, depth
        self.clock, self.approver, self.tap = clock or Clock(), approver, tap
        self.memory_factory, self.tool_lock = memory_factory, tool_lock
        self.children: list[Agent] = []
        self._closers: list[Callable[[], Any]] = []
        self.secrets = spec.source.secrets | env_secrets()
        """Values masked wherever this agent's runs are stored."""
        self.sinks = list(sinks or [])
        if depth == 0:  # sub-agents share their parent's sinks: one trace per top-level run
            self.sinks.extend(self._observers())
        if checkpoints is True:
            checkpoints = depth == 0 and spec.checkpoint.enabled
            if checkpoints:
                checkpoints = open_store(spec.checkpoint, self.secrets)
        self.checkpoints: CheckpointStore | None = checkpoints or None
        self.run_sessions = run_sessions  # before the tools: its sub-agents take it too
        self.session: str | None = None if run_sessions else session or spec.memory.session
        """The conversation the runs continue; None: each run is a conversation of its own
        (with `run_sessions`, of its own unless it names one: never the spec's session,
        which would give every caller one conversation)."""
        self.models = self._models()
        self._summary_models: list[Model] | None = None
        try:
            self.tools = self._tools()
            self.stages = [self.child(s.sub) for s in resolved.stages]
            """A pipeline's step agents, in order."""
            self.critic = self.child(resolved.critic) if resolved.critic is not None else None
            self.handoffs = {handoff_name(h.spec.name): self.child(h) for h in resolved.handoffs}
            """The agents this one may hand over to, by the name of the tool that does it."""
            for name, target in self.handoffs.items():
                if name in self.tools:
                    raise spec.source.error(("handoffs",), f"the handoff tool {name!r} clashes "
                                            f"with a tool of that name; rename the tool")
                self.tools[name] = handoff_tool(name, target.spec)
        except BaseException:
            self._close_now()  # servers already started must not outlive a failed build
            raise
        self.tool_schemas = [t.schema() for t in self.tools.values()]
        self.tool_views = [{"name": t.name, "description": t.description,
                            "input_hint": t.input_hint()} for t in self.tools.values()]
        if self.tool_schemas and not self.native_tools():
            for m in self.models:  # a model that can hold its replies to the ReAct format
                constrain = getattr(m, "constrain", None)
                if constrain is not None:
                    constrain(self.tool_schemas)
        self.template = resolved.template
        self.examples: Any = None
        """The spec's examples_pool, indexed once (runner.examples.ExamplePool), or None."""
        pool = spec.prompt.examples_pool
        if pool is not None:  # its index (SQLite FTS5) only for the specs that have one
            from .examples import ExamplePool

            self.examples = ExamplePool(pool.examples, pool.k, spec.prompt.examples or [])
        self._settings: dict[str, Any] | None = None
        self._unused_memory: Any = None
        if self.session is None and not run_sessions:  # no run sees another's turns
            self._unused_memory, memory = memory, NoMemory()
        self.memory = memory if memory is not None else (
            memory_factory(spec) if memory_factory is not None else resolved.memory())
        self._closed = False

    # ------------------------------------------------------------------ building the parts

    def _models(self) -> list[Model]:
        spec = self.spec

        def build() -> list[Model]:
            return [factory(spec.model, model_id) for model_id, factory in self.resolved.models]

        return self.tap.models(spec.name, build, spec.model) if self.tap is not None else build()

    def _tools(self) -> dict[str, Tool]:
        tools: dict[str, Tool] = {}
        self.tool_entries: dict[str, ToolRef] = {}
        """Tool name -> the `tools:` entry that gave it (`runner tools` shows where from)."""
        contexts = [BuildContext(self.spec, ref, self) for ref in self.resolved.tools]
        for ref, ctx in zip(self.resolved.tools, contexts):  # slow starts overlap
            if ref.factory.prepare is not None:
                ctx.prepared = ref.factory.prepare(ref.options, ctx)
        for ref, ctx in zip(self.resolved.tools, contexts):
            c = ref.common
            built = ref.factory.build(ref.options, ctx)
            if ref.factory.named_group:  # the entry's name is the group's (a server's)
                built = built if isinstance(built, list) else [built]
            elif isinstance(built, list):  # one entry, several tools (`- files: ...`)
                if c.name or c.description:
                    raise self.spec.source.error(ref.key, f"{ref.name} gives several tools "
                                                 f"({', '.join(t.name for t in built)}); it "
                                                 f"takes no name or description")
            else:
                built = [renamed(built, ref.alias if ref.alias != ref.name else None,
                                 c.description)]
            for t in built:
                for key in COMMON_TOOL_KEYS - {"name", "description"}:  # set on the tool
                    if getattr(c, key) is not None and not ref.factory.named_group:
                        setattr(t, key, getattr(c, key))  # (a group's factory sets its own)
                if t.name in tools:
                    other = self.tool_entries[t.name]
                    raise self.spec.source.error(ref.key, f"tool name {t.name!r} of "
                                                 f"{_entry(ref)} is already used by "
                                                 f"{_entry(other)}; rename one with name:")
                tools[t.name] = t
                self.tool_entries[t.name] = ref
        return tools

    def _observers(self) -> list[Sink]:
        """The sinks a top-level agent gets: the trace file, OpenTelemetry export, and the
        plugins' `on_event` hook."""
        sinks: list[Sink] = []
        trace = self.spec.trace
        if trace.enabled:
            from .trace.writer import TraceWriter

            sinks.append(TraceWriter(trace, self.secrets))
        from .trace.otel import otel_sink

        exporter = otel_sink(trace.otlp, Redactor.for_trace(trace, self.secrets))
        if exporter is not None:
            sinks.append(exporter)
        hooks = self.resolved.hooks
        if hooks is not None:
            on_event = hooks.on_event

            def plugins_hear(event: ev.Event) -> None:
                if on_event.get_hookimpls():  # no listener: skip pluggy's call (~2 us an event)
                    on_event(event=event)

            sinks.append(plugins_hear)
        return sinks

    def summary_models(self) -> list[Model]:
        """The models that summarize this agent's memory: `memory.summarize.model`, else the
        agent's own (built on first use)."""
        if self.resolved.summary_model is None:
            return self.models
        if self._summary_models is None:
            model_id, factory = self.resolved.summary_model
            settings = self.spec.model.model_copy(update={"id": model_id, "fallbacks": []})

            def build() -> list[Model]:
                return [factory(settings, model_id)]

            self._summary_models = self.tap.models(f"{self.spec.name}.summary", build,
                                                   settings) if self.tap is not None else build()
        return self._summary_models

    def child(self, resolved: Resolved) -> Agent:
        """A sub-agent of this one (see BuildContext.sub_agent): its runs are committed to
        this agent's checkpoint store (shared, closed by the top-level agent). With
        `run_sessions`, so does it: its spec's session is then kept per session of the runs
        that delegate to it (`session_of`), never one conversation for every caller."""
        agent = Agent(resolved, depth=self.depth + 1, sinks=self.sinks, tap=self.tap,
                      memory_factory=self.memory_factory, clock=self.clock,
                      checkpoints=self.checkpoints or False, approver=self.approver,
                      run_sessions=self.run_sessions)
        if self.checkpoints is not None:  # its runs are stored there: its secrets masked too
            self.checkpoints.secrets |= agent.secrets
        self.children.append(agent)
        return agent

    # ------------------------------------------------------------------ runs

    def start(self, input: Any, *, budget: Budget | None = None,
              parent_run_id: str | None = None, run_id: str | None = None,
              context: list[Any] | None = None, session: str | None = None) -> Run:
        """A new run of `input`; `context`: messages of the conversation so far that the run
        sees after its session's history (what a handoff passes on); `session`: the
        conversation this run continues instead of the agent's (see `run_sessions`)."""
        run = Run(self, input, budget or Budget(self.spec.budget, self.clock), parent_run_id,
                  run_id)
        run.context = list(context or [])
        if session is not None:
            if not self.run_sessions and session != self.session:
                raise ValueError(f"agent {self.spec.name} was built without run_sessions: "
                                 f"its runs cannot name a session")
            run.session = session
        return run

    def restore(self, state: dict[str, Any], budget: Budget | None = None) -> Run:
        """A run rebuilt from its last checkpoint, ready to `execute()` from where it stopped
        (`budget`: a parent's, which this sub-agent's run draws from)."""
        return restore_run(self, state, budget)

    async def run(self, input: Any, **kw: Any) -> RunResult:
        return await self.start(input, **kw).execute()

    def session_of(self, parent: Run) -> str | None:
        """The session a run of this sub-agent for `parent` continues. Without
        `run_sessions`: the agent's own (its spec's, or None). With it: the spec's
        memory.session within the parent run's (`PARENT/NAME`; a server's sessions cannot
        hold a `/`, so no caller names it), or None when either has none."""
        if not self.run_sessions:
            return self.session
        named = self.spec.memory.session
        return f"{parent.session}/{named}" if named and parent.session is not None else None

    def settings(self) -> dict[str, Any]:
        """What shapes this agent's model requests, for traces (worked out once; each run
        gets its own copy)."""
        if self._settings is None:
            spec = self.spec
            self._settings = {
                "temperature": spec.model.temperature, "max_tokens": spec.model.max_tokens,
                "style": "tools" if self.native_tools() else "react",
                "max_iterations": spec.loop.max_iterations,
                "budget": spec.budget.model_dump(exclude_none=True), "depth": self.depth,
                "memory": spec.memory.backend
                if self.session is not None or self.run_sessions else "none",
                "spec": str(spec.source.path)}
        return {**self._settings, "budget": dict(self._settings["budget"])}

    def native_tools(self) -> bool:
        style = self.spec.loop.style
        return bool(self.tools) and (style == "tools" or (
            style == "auto" and self.models[0].supports_tools()))

    def prompt(self, input: Any, history: list[Any], **extra: Any) -> str:
        """The master prompt rendered for `input` (the template sees the spec's variables)."""
        p = self.spec.prompt
        examples = p.examples if p.examples is not None else []
        if self.examples is not None:  # the spec's examples and the pool's, by likeness
            examples = self.examples.pick(as_text(input))
        return self.template.render(
            **p.variables, vars=p.variables, instructions=p.instructions, history=history,
            input=input, tools=self.tool_views, examples=examples, **extra)

    async def remember(self, input: Any, answer: Any, session: str | None = None) -> None:
        """Keep a finished run's turn in its session's memory (default: the agent's), secrets
        masked."""
        session = session if session is not None else self.session
        if session is None:
            return
        await self.memory.append(session, [
            {"role": "user", "content": redact_text(as_text(input), self.secrets)},
            {"role": "assistant", "content": redact_text(as_text(answer), self.secrets)}])

    # ------------------------------------------------------------------ cleanup

    def _closing(self) -> list[Any]:
        """Start closing what the tools' factories opened; the futures still to wait for."""
        import concurrent.futures

        futures = [f for f in (close() for close in self._closers)
                   if isinstance(f, concurrent.futures.Future)]
        self._closers.clear()
        return futures

    def _close_now(self) -> None:
        """Close what the build opened so far, waiting here (a build that failed): the tools'
        servers, the sub-agents built before the failure, the checkpoint store."""
        import concurrent.futures

        futures = self._closing()
        for child in self.children:
            child._close_now()
        concurrent.futures.wait(futures, 30)
        if self.checkpoints is not None and self.depth == 0:
            self.checkpoints.close()

    async def _close_tools(self) -> None:
        import asyncio

        await asyncio.gather(*map(asyncio.wrap_future, self._closing()),
                             return_exceptions=True)

    async def close(self) -> None:
        """Close what this agent owns (tools' servers, memory, checkpoint store, sub-agents),
        once."""
        if self._closed:
            return
        self._closed = True
        try:
            try:
                await self._close_tools()
                for child in self.children:
                    await child.close()
            finally:
                await self.memory.close()
                if self._unused_memory is not None:  # given, so owned, though never used
                    await self._unused_memory.close()
        finally:
            if self.checkpoints is not None and self.depth == 0:  # sub-agents share it
                self.checkpoints.close()

    async def __aenter__(self) -> Agent:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
