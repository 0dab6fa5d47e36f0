"""The agents a server offers: every spec under the folders it was given, checked and built
once, by name, with the schema of what each takes. Shared by `runner mcp` and `runner serve`.

Agent test files are not served, nor specs that are only bases of others: extended by
another and without a `description` of their own (a base of shared defaults). A name is how
a caller picks the agent: when two specs share one, the shallower keeps it and the other is
served by its path under the folder if it is in a subfolder (`team/researcher` over HTTP,
`team.researcher` over MCP, whose tool names take no slash); two that still clash are a
spec error."""

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
                build: Callable[[Resolved], Agent] = Agent,
                qualify: str | None = None) -> list[Served]:
    """Every spec under `paths` (folders or files) checked and built with `build`; SpecErrors
    lists every problem of every file, and nothing stays open when one is raised. With
    `qualify` (a separator), a name already taken by a shallower spec is replaced by the
    spec's path under its folder, without the suffix, its parts joined by the separator."""
    files: list[Path] = []
    where: dict[Path, str] = {}
    for p in paths:
        found = spec_files(p) if p.is_dir() else [p]
        # shallower first, so that `agents/x.yaml` keeps the name `agents/team/x.yaml` shares
        found.sort(key=lambda f: (len(f.relative_to(p).parts), f) if p.is_dir() else (0, f))
        files.extend(found)
        where.update((f.resolve(), f.relative_to(p).with_suffix("").parts if p.is_dir()
                      else (f.stem,)) for f in found)
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
            if path in bases and not spec.description:
                continue
            name = spec.name
            if name in names and qualify is not None and len(where.get(path.resolve(), ())) > 1:
                name = qualify.join(where[path.resolve()])
            if name in names:
                problems.append(spec.source.error(("name",), f"agent name {name!r} is also "
                                                  f"the name of {shown_path(names[name])}; "
                                                  f"served agents need names of their own"))
                continue
            names[name] = path
            try:
                agent = build(resolve(spec))
            except SpecErrors as exc:
                problems.extend(exc.errors)
                continue
            except SpecError as exc:
                problems.append(exc)
                continue
            served.append(Served(name, path, agent, input_schema(spec)))
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
