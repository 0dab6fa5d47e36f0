"""The `agent` tool: another spec used as a tool (`- agent: agents/writer.yaml`). The
sub-agent draws from its parent's budget and its events carry the parent's run id; its
depth and cycles are checked when the parent's spec is resolved."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ToolError
from ..hookspecs import hookimpl
from ..tools import Tool, ToolContext, ToolFactory, tool


class AgentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)
    spec: str
    """Path of the sub-agent's spec, relative to this spec."""


def _build(options: AgentOptions, ctx: Any) -> Tool:
    agent = ctx.sub_agent(ctx.ref.sub)
    sub = agent.spec

    async def run(input: Annotated[str, Field(description="the task or question for this agent")],
                  context: ToolContext) -> str:
        run = agent.start(input, budget=context.budget, parent_run_id=context.run_id)
        await run.execute(listener=context.forward)
        if not run.result.ok:
            raise ToolError(f"sub-agent {sub.name} ended with {run.result.status}: "
                            f"{run.result.error}")
        return str(run.result.answer)

    return tool(run, name=sub.name, description=sub.description or f"the {sub.name} agent")


@hookimpl
def register_tools(register: Any) -> None:
    register(ToolFactory("agent", "Another agent, used as a tool.", AgentOptions, _build))
