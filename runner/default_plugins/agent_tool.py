"""The `agent` tool: another spec used as a tool (`- agent: agents/writer.yaml`). The
sub-agent's run draws from its parent's budget, nests in its trace and is committed to its
checkpoint store (a resumed parent continues it rather than starting it again, see
`runner.delegation`); its depth and cycles are checked when the parent's spec is resolved.
A run that fails comes back to the parent as the tool's error."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import Interrupted, ToolError
from ..hookspecs import hookimpl
from ..result import as_text
from ..tools import Tool, ToolContext, ToolFactory, tool

SUB_AGENT_TIMEOUT_S = 3600.0
"""A sub-agent's call is not cut at loop.tool_timeout_s (its model calls have their own
deadlines); `timeout_s:` on the entry, or the budget's wall_s, still bound it."""


class AgentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)
    spec: str
    """Path of the sub-agent's spec, relative to this spec."""


def _build(options: AgentOptions, ctx: Any) -> Tool:
    agent = ctx.sub_agent(ctx.ref.sub)
    sub = agent.spec

    async def run(input: Annotated[str, Field(description="the task or question for this agent")],
                  context: ToolContext) -> str:
        result = await context.run.delegate(agent, input, f"tool:{context.step}")
        if isinstance(result.exception, Interrupted):  # the run stops: a resume continues it
            raise result.exception
        if not result.ok:
            raise ToolError(f"sub-agent {sub.name} ended with {result.status}: {result.error}")
        return as_text(result.answer)

    return tool(run, name=sub.name, description=sub.description or f"the {sub.name} agent",
                timeout_s=SUB_AGENT_TIMEOUT_S)


@hookimpl
def register_tools(register: Any) -> None:
    register(ToolFactory("agent", "Another agent, used as a tool.", AgentOptions, _build))
