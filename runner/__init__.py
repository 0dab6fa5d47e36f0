"""yaml-agent-runner: run AI agents declared in YAML.

    from runner import load_spec, resolve_spec, run_agent
    result = run_agent("agents/calculator.yaml", "What is 17 times 23?")
    print(result.answer, result.status, result.usage)

    spec = load_spec("agents/researcher.yaml")   # the YAML read and validated; no plugin
    resolve_spec(spec)                           # checked against the installed plugins

Names are imported lazily so that `runner --help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "load_spec", "resolve_spec", "run_agent", "arun_agent", "resume_run", "aresume_run", "Agent",
    "Run", "RunResult", "Step", "AgentSpec", "Resolved",
    "tool", "Tool", "ToolFactory", "ToolContext", "hookimpl", "register_plugin",
    "unregister_plugin", "RunnerError", "SpecError", "ModelError", "ToolError",
    "LimitExceeded", "RunFailed",
]

_WHERE = {
    "load_spec": "spec", "AgentSpec": "spec", "resolve_spec": "resolve", "Resolved": "resolve",
    "resume_run": "api", "aresume_run": "api", "RunResult": "result", "Step": "result",
    "run_agent": "api", "arun_agent": "api",
    "Agent": "agent", "Run": "loop",
    "tool": "tools", "Tool": "tools", "ToolFactory": "tools", "ToolContext": "tools",
    "hookimpl": "hookspecs", "register_plugin": "plugins", "unregister_plugin": "plugins",
    "RunnerError": "errors", "SpecError": "errors", "ModelError": "errors",
    "ToolError": "errors", "LimitExceeded": "errors", "RunFailed": "errors",
}

if TYPE_CHECKING:
    from .api import arun_agent, aresume_run, resume_run, run_agent
    from .errors import LimitExceeded, ModelError, RunFailed, RunnerError, SpecError, ToolError
    from .hookspecs import hookimpl
    from .agent import Agent
    from .loop import Run
    from .result import RunResult, Step
    from .plugins import register_plugin, unregister_plugin
    from .resolve import Resolved, resolve_spec
    from .spec import AgentSpec, load_spec
    from .tools import Tool, ToolContext, ToolFactory, tool


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'runner' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
