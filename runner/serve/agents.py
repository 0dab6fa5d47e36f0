"""The agents a server offers: every spec under the folders it was given, checked and built
once, by name, with the schema of what each takes. Shared by `runner mcp` and `runner serve`.

Specs that are only bases of others (`extends:`) and agent test files are not served; two
specs with one name are a spec error (a name is how a caller picks the agent)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..agent import Agent
from ..errors import SpecError, SpecErrors
from ..resolve import Resolved, resolve
from ..spec import AgentSpec, is_test_file, load_spec, shown_path

__all__ = ["Served", "spec_files", "load_agents", "close_all", "input_schema", "run_input",
           "takes_named_inputs", "is_loopback"]


@dataclass
class Served:
    """One agent spec, made runnable."""

    name: str
    path: Path
    agent: Agent
    input_schema: dict[str, Any] = field(default_factory=dict)
    """JSON Schema of the arguments: `input` for an agent, the named inputs of a chain."""


def spec_files(folder: Path) -> list[Path]:
    """The spec files under `folder` (dot-folders and agent test files left out)."""
    return sorted(q for q in folder.rglob("*") if q.suffix in (".yaml", ".yml") and q.is_file()
                  and not is_test_file(q)
                  and not any(part.startswith(".") for part in q.relative_to(folder).parts))


def load_agents(paths: Iterable[Path], overrides: Iterable[str] = (),
                build: Callable[[Resolved], Agent] = Agent) -> list[Served]:
    """Every spec under `paths` (folders or files) checked and built with `build`; SpecErrors
    lists every problem of every file, and nothing stays open when one is raised."""
    files: list[Path] = []
    for p in paths:
        files.extend(spec_files(p) if p.is_dir() else [p])
    specs: list[AgentSpec] = []
    problems: list[SpecError] = []
    for f in files:
        try:
            specs.append(load_spec(f, list(overrides)))
        except SpecErrors as exc:
            problems.extend(exc.errors)
        except SpecError as exc:
            problems.append(exc)
    bases = {base for s in specs for base in s.source.bases}
    served: list[Served] = []
    names: dict[str, Path] = {}
    try:
        for spec in specs:
            path = spec.source.path
            if path in bases:
                continue
            if spec.name in names:
                problems.append(spec.source.error(("name",), f"agent name {spec.name!r} is also "
                                                  f"the name of {shown_path(names[spec.name])}; "
                                                  f"served agents need names of their own"))
                continue
            names[spec.name] = path
            try:
                agent = build(resolve(spec))
            except SpecErrors as exc:
                problems.extend(exc.errors)
                continue
            except SpecError as exc:
                problems.append(exc)
                continue
            served.append(Served(spec.name, path, agent, input_schema(spec)))
        if problems:
            raise SpecErrors(problems)
        if not served:
            raise SpecError(f"no agent spec to serve under {', '.join(map(str, files)) or '.'}")
    except BaseException:
        import asyncio

        asyncio.run(close_all(served))
        raise
    return served


async def close_all(served: list[Served]) -> None:
    for s in served:
        await s.agent.close()


def takes_named_inputs(spec: AgentSpec) -> bool:
    """Whether the spec takes named inputs (a chain, a pipeline with `inputs:`) rather than
    one `input`."""
    return spec.kind == "chain" or bool(spec.inputs)


def run_input(spec: AgentSpec, arguments: dict[str, Any]) -> Any:
    """What a run of `spec` is started on, from arguments its input schema accepted."""
    return arguments if takes_named_inputs(spec) else arguments["input"]


def input_schema(spec: AgentSpec) -> dict[str, Any]:
    """An agent takes `input`; a chain (or a pipeline with `inputs:`) takes its named inputs
    (required unless they have a default)."""
    if not takes_named_inputs(spec):
        return {"type": "object", "additionalProperties": False, "required": ["input"],
                "properties": {"input": {"type": "string",
                                         "description": "the task or question for this agent"}}}
    props: dict[str, Any] = {}
    required = []
    for name, inp in spec.inputs.items():
        props[name] = {"description": inp.description} if inp and inp.description else {}
        if inp is None or (inp.required and inp.default is None):
            required.append(name)
    return {"type": "object", "additionalProperties": False, "properties": props,
            "required": required}


def is_loopback(host: str) -> bool:
    """Whether an address to listen on is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
