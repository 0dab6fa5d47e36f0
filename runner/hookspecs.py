"""Every hook a plugin can implement. Plugins register with the entry-point group
`yaml_agent_runner`; the built-ins in `runner.default_plugins` use these same hooks."""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("yaml_agent_runner")
hookimpl = pluggy.HookimplMarker("yaml_agent_runner")

# ---------------------------------------------------------------- registration (at load time)


@hookspec
def register_tools(register: Callable[[Any], None]) -> None:
    """Register tools: call register(tool) with a runner.Tool or a runner.ToolFactory."""


@hookspec
def register_models(register: Callable[..., None]) -> None:
    """Register a model provider: register(prefix, factory, family=None, check_options=None); factory(ModelSpec, model_id) -> Model; a family's prefix gives way to a plugin's; check_options(options) -> None or (option, reason)."""


@hookspec
def register_memory(register: Callable[..., None]) -> None:
    """Register a memory backend: register(name, factory, options=None); factory(MemorySpec, options) -> Memory."""


# ---------------------------------------------------------------- lifecycle (observe and adjust)


@hookspec
def prepare_jinja2_environment(env: Any) -> None:
    """Adjust the sandboxed Jinja2 environment (add filters or globals) before templates load."""


@hookspec
def on_event(event: Any) -> None:
    """Observe each run event (runner.events) as it happens; must not block."""
