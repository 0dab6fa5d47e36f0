"""The `agent` tool: another spec used as a tool (`- agent: agents/writer.yaml`). The
sub-agent draws from its parent's budget and its events carry the parent's run id."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from ..hookspecs import hookimpl
from ..tools import Tool, ToolContext, ToolFactory, tool

MAX_DEPTH = 5


class AgentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)
    spec: str
    """Path of the sub-agent's spec, relative to this spec."""


def _build(options: AgentOptions, ctx: Any) -> Tool:
    from ..errors import ToolError
    from ..loop import Agent

    sub = ctx.ref.subspec
    parent = ctx.agent
    agent = Agent(sub, depth=parent.depth + 1, sinks=parent.sinks, tap=parent.tap,
                  memory_factory=parent.memory_factory)

    async def run(input: Annotated[str, Field(description="the task or question for this agent")],
                  context: ToolContext) -> str:
        if agent.depth > MAX_DEPTH:
            raise ToolError(f"sub-agents nested deeper than {MAX_DEPTH}")
        run = agent.start(input, budget=context.extra["budget"], parent_run_id=context.run_id)
        await run.execute(listener=context.extra["run"].forward)
        if not run.result.ok:
            raise ToolError(f"sub-agent {sub.name} ended with {run.result.status}: "
                            f"{run.result.error}")
        return str(run.result.answer)

    return tool(run, name=sub.name, description=sub.description or f"the {sub.name} agent")


@hookimpl
def register_tools(register: Any) -> None:
    register(ToolFactory("agent", "Another agent, used as a tool.", AgentOptions, _build))
