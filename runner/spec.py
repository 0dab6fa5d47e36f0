"""The agent spec: pydantic models, YAML loading with line numbers, `${VAR:-default}`,
`extends:`, `--set` overrides, checks against the installed plugins, and JSON Schema export."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from inspect import isclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr,
                      ValidationError)

from . import _yaml
from ._yaml import Mark, format_path
from .errors import SpecError, SpecErrors

__all__ = ["AgentSpec", "ModelSpec", "PromptSpec", "LoopSpec", "BudgetSpec", "MemorySpec",
           "OutputSpec", "CheckpointSpec", "InputSpec", "ToolRef", "SpecSource", "load_spec", "validate_paths",
           "json_schema", "explain", "did_you_mean", "SECRET_NAME"]

DEFAULT_MODEL = "local/gemma-3-270m"
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.I)
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ROOT_MARKERS = ("pyproject.toml", ".git", ".runner")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True,
                              frozen=False)


class ModelSpec(_Strict):
    """Which model answers, and how it is called."""

    id: str = DEFAULT_MODEL
    """A LiteLLM model id (`openai/gpt-4o-mini`, `ollama/llama3`) or a plugin's (`local/...`, `fake/...`)."""
    temperature: float | None = Field(0.0, ge=0, le=2)
    """Sampling temperature; null leaves the provider's default."""
    max_tokens: int = Field(512, ge=1, le=1_000_000)
    """Most tokens one model reply may have."""
    timeout_s: float = Field(60.0, gt=0, le=3600)
    """Deadline for one model call, in seconds."""
    retries: int = Field(2, ge=0, le=10)
    """Extra attempts after a retryable failure (timeout, 429, 5xx)."""
    backoff_s: float = Field(0.5, ge=0, le=60)
    """First wait before a retry; it doubles each attempt, with jitter (0.5x to 1x)."""
    max_backoff_s: float = Field(30.0, ge=0, le=3600)
    """Longest wait between retries (a longer Retry-After is still honoured)."""
    fallbacks: list[str] = []
    """Model ids tried in order when this one fails for good."""
    api_base: str | None = None
    """Base URL of an OpenAI-compatible or self-hosted server."""
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Name of the environment variable that holds the API key (never the key itself)."""
    stop: list[str] = Field([], max_length=4)
    """Extra stop sequences (a ReAct agent always stops before an invented `Observation:`)."""
    stream: bool = False
    """Stream tokens from the provider (only worth it when a person watches)."""
    options: dict[str, Any] = {}
    """Extra provider parameters passed through unchanged (`top_p`, `seed`, plugin options)."""


class PromptSpec(_Strict):
    """The master prompt."""

    template: str | None = None
    """A Jinja2 template file, relative to this spec; default: the built-in ReAct template."""
    text: str | None = None
    """An inline Jinja2 template, instead of `template`."""
    instructions: str = ""
    """What the agent is for and how it should behave; shown at the top of the prompt."""
    examples: list[str] | None = None
    """Few-shot transcripts in the loop's format; replace the built-in examples."""
    variables: dict[str, Any] = {}
    """Extra values the template can use (passed as data, never rendered as templates)."""


class LoopSpec(_Strict):
    """How the Thought -> Action -> Observation loop runs."""

    style: Literal["react", "tools", "auto"] = "auto"
    """`react`: text actions; `tools`: native tool calls; `auto`: native where the model supports it."""
    max_iterations: int = Field(8, ge=1, le=1000)
    """Most model calls in one run."""
    max_parse_errors: int = Field(3, ge=1, le=100)
    """Replies in a row with no usable action or answer before the run fails."""
    max_observation_chars: int = Field(4000, ge=100, le=1_000_000)
    """Longer tool output is cut to this size with a marker."""
    tool_timeout_s: float = Field(30.0, gt=0, le=3600)
    """Default deadline for one tool call."""
    max_repeats: int = Field(3, ge=2, le=100)
    """The same action with the same input this many times: the model is told; once more ends the run (loop_detected)."""
    approve: Literal["ask", "always", "never"] = "ask"
    """Tools marked `confirm`: ask the person at the terminal, run them without asking, or refuse them."""


class BudgetSpec(_Strict):
    """Limits on what one run may spend; any left out is unlimited."""

    tokens: int | None = Field(None, ge=1)
    """Total prompt and completion tokens."""
    cost_usd: float | None = Field(None, gt=0)
    """Total cost, where LiteLLM knows the model's price."""
    wall_s: float | None = Field(None, gt=0)
    """Wall-clock seconds for the whole run."""
    tool_calls: int | None = Field(None, ge=0)
    """Number of tool calls."""


class MemorySpec(BaseModel):
    """Conversation memory kept across runs of one session."""

    model_config = ConfigDict(extra="allow", strict=True, use_attribute_docstrings=True)
    backend: str = "buffer"
    """`buffer` (in-process), `sqlite`, `none`, or a plugin's backend."""
    session: str = "default"
    """Which conversation to continue; `--session` overrides it."""
    window: int | None = Field(None, ge=1)
    """Keep only the last N messages in the prompt."""


class CheckpointSpec(_Strict):
    """Where each run's state is committed after every step, so `runner resume` can continue it."""

    enabled: bool = True
    """Commit the run's state after every step."""
    path: str = ".runner/runs.db"
    """SQLite file, relative to the current directory."""


def valid_regex(pattern: str) -> str:
    """A pydantic validator: the pattern compiles as a Python regular expression."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return pattern


class OtlpSpec(_Strict):
    """OpenTelemetry export of spans (run, step, model call, tool call) over OTLP/HTTP."""

    endpoint: str | None = None
    """Collector base URL (`http://host:4318`; `/v1/traces` is added) or a full URL ending in
    `/v1/traces`. Unset: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`,
    and no export when neither is set."""
    headers: dict[str, str] = {}
    """Extra HTTP headers, e.g. `{authorization: "Bearer ${OTLP_TOKEN}"}` (also
    `OTEL_EXPORTER_OTLP_HEADERS`)."""
    service_name: str | None = None
    """`service.name` of the spans (also `OTEL_SERVICE_NAME`); default `yaml-agent-runner`."""
    capture_content: bool = False
    """Also export prompts, replies and tool inputs/outputs (redacted) as span attributes."""


class TraceSpec(_Strict):
    """What each run records: its events as JSON lines, flushed as they happen."""

    enabled: bool = True
    """Write a trace of every run (`runner trace list|show|view` read them)."""
    path: str = ".runner/traces"
    """Folder of the trace files (one `RUN_ID.jsonl` per run), relative to the current
    directory."""
    redact_keys: list[Annotated[str, Field(min_length=1)]] = []
    """Field names whose values are masked wherever they appear (tool inputs, outputs parsed
    as JSON, ...), matched case-insensitively; secrets are always masked."""
    redact_patterns: list[Annotated[str, Field(min_length=1), AfterValidator(valid_regex)]] = []
    """Regular expressions masked in every text of the trace, e.g. `\\b\\d{16}\\b`."""
    otlp: OtlpSpec = OtlpSpec()
    """Optional OpenTelemetry export."""


class OutputSpec(_Strict):
    """A structured final answer."""

    json_schema: dict[str, Any] = Field(alias="schema")
    """JSON Schema the final answer must satisfy (the answer is parsed as JSON)."""


class InputSpec(_Strict):
    """A named input of a chain (`--input NAME=VALUE`)."""

    description: str = ""
    """What the input is for."""
    default: Any = None
    """Used when the input is not given; without it the input is required."""
    required: bool = True
    """Whether the run fails when the input is missing and has no default."""


def _tool_entry(value: Any) -> Any:
    if not isinstance(value, (str, dict)):
        raise ValueError("a tool is a name (- calculator) or a mapping with one key "
                         "(- search: {path: kb/})")
    return value


ToolEntry = Annotated[Union[str, dict[str, Any]], BeforeValidator(_tool_entry)]


class AgentSpec(_Strict):
    """An agent (a ReAct loop with tools) or a chain (one templated model call)."""

    version: Literal[1] = 1
    """Spec format version."""
    kind: Literal["agent", "chain"] = "agent"
    """`agent` runs the tool loop; `chain` renders its prompt and makes one model call."""
    name: str = Field("agent", pattern=r"^[A-Za-z0-9_.-]+$")
    """The agent's name: letters, digits, `_`, `.` and `-`; a parent agent calls it by this name."""
    description: str = ""
    """One line on what the agent does; shown to a parent agent that uses it as a tool."""
    extends: str | None = None
    """A base spec to start from: maps merge, lists replace."""
    model: ModelSpec = ModelSpec()
    """Which model answers, and how it is called."""
    prompt: PromptSpec = PromptSpec()
    """The master prompt."""
    loop: LoopSpec = LoopSpec()
    """Limits and style of the Thought -> Action -> Observation loop."""
    budget: BudgetSpec = BudgetSpec()
    """What one run may spend; a limit left out is unlimited."""
    tools: list[ToolEntry] = []
    """Tools by name (`- calculator`) or with options (`- search: {path: kb/}`); `- agent: x.yaml` uses another agent."""
    memory: MemorySpec = MemorySpec()
    """Conversation memory kept across runs of one session."""
    checkpoint: CheckpointSpec = CheckpointSpec()
    """Where each run's state is committed, so `runner resume` can continue it."""
    trace: TraceSpec = TraceSpec()
    """What each run records in `.runner/traces/`, and optional OpenTelemetry export."""
    inputs: dict[str, InputSpec | None] = {}
    """Named inputs of a chain; an agent takes the user's question as `input`."""
    output: OutputSpec | None = None
    """A structured final answer, checked against a JSON Schema."""

    _source: SpecSource = PrivateAttr()
    _tools: list[ToolRef] = PrivateAttr(default_factory=list)

    @property
    def source(self) -> SpecSource:
        return self._source

    @property
    def tool_refs(self) -> list[ToolRef]:
        """The tools entries, normalised and checked against the registry."""
        return self._tools


@dataclass
class ToolRef:
    """One entry of `tools:` after normalisation."""

    name: str
    """The registered tool (or factory) name."""
    options: dict[str, Any]
    alias: str
    """The name the model sees (`name:` in the entry renames it)."""
    timeout_s: float | None = None
    description: str | None = None
    max_output_chars: int | None = None
    confirm: bool | None = None
    idempotent: bool | None = None
    built_options: Any = None
    subspec: AgentSpec | None = None


_COMMON_TOOL_KEYS = {"name", "timeout_s", "description", "max_output_chars", "confirm",
                     "idempotent"}


@dataclass
class SpecSource:
    """Where a spec came from, for errors, relative paths and redaction."""

    path: Path
    root: Path
    marks: dict[tuple[Any, ...], Mark] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)
    """Values that came from secret-looking variables: masked in explain, traces and errors."""
    raw: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    overrides: list[str] = field(default_factory=list)
    """The `--set` values it was loaded with (a resumed run reloads it the same way)."""
    env: Mapping[str, str] | None = field(default=None, repr=False)
    """The variables `${VAR}` is read from (None: os.environ); sub-agents use the same."""

    def error(self, path: tuple[Any, ...], reason: str) -> SpecError:
        """A SpecError located at the deepest known mark on `path`."""
        mark = None
        for n in range(len(path), -1, -1):
            mark = self.marks.get(tuple(path[:n]))
            if mark is not None:
                break
        if mark is None:
            return SpecError(reason, path=str(self.path), key=format_path(path) or None)
        return SpecError(reason, path=mark.file, line=mark.line or None, col=mark.col or None,
                         key=format_path(path) or None)

    def resolve(self, rel: str, key: tuple[Any, ...]) -> Path:
        """A path from the spec, relative to its file and confined to the project root."""
        p = (self.path.parent / os.path.expanduser(rel)).resolve()
        if not p.is_relative_to(self.root):
            raise self.error(key, f"path {rel!r} escapes the project root {self.root}")
        return p


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' or ''."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def find_root(spec_path: Path) -> Path:
    """The project root: $RUNNER_ROOT, else the nearest folder with pyproject.toml, .git or .runner."""
    env_root = os.environ.get("RUNNER_ROOT")
    if env_root:
        return Path(env_root).resolve()
    for d in [spec_path.parent, *spec_path.parent.parents]:
        if any((d / m).exists() for m in _ROOT_MARKERS):
            return d
    return spec_path.parent


# ---------------------------------------------------------------------------- reading files

def _interpolate(text: str, plain: bool, path: tuple[Any, ...], mark: Mark,
                 env: Mapping[str, str], secrets: set[str]) -> Any:
    """Substitute `${VAR}`, `${VAR:-default}` and `$${`; retype a plain scalar afterwards.

    A value that came from a secret-looking variable stays a string, so that it can be masked.
    """
    if "$" not in text:
        return _yaml.resolve_scalar(text) if plain else text
    missing: list[str] = []
    secret = False

    def sub(m: re.Match[str]) -> str:
        nonlocal secret
        if m.group(0) == "$${":
            return "${"
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                missing.append(name)
                return ""
            value = default
        elif SECRET_NAME.search(name) and value:
            secrets.add(value)
            secret = True
        return value

    out = _VAR.sub(sub, text)
    if missing:
        raise SpecError(f"environment variable {missing[0]} is not set and has no default "
                        f"(write ${{{missing[0]}:-default}} to give one)", path=mark.file,
                        line=mark.line, col=mark.col, key=format_path(path) or None)
    return _yaml.resolve_scalar(out) if plain and not secret else out


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return over


def _read(path: Path, root: Path, env: Mapping[str, str], secrets: set[str],
          marks: dict[tuple[Any, ...], Mark], stack: tuple[Path, ...]) -> dict[str, Any]:
    shown = _display(path)
    try:
        if not path.is_file():
            raise SpecError("not a regular file" if path.exists() else "no such file", path=shown)
        size = path.stat().st_size
        if size > _yaml.MAX_BYTES:
            raise SpecError(f"file is {size} bytes; specs are limited to {_yaml.MAX_BYTES}",
                            path=shown)
        with path.open("rb") as f:  # bounded even if the file grows after stat()
            raw = f.read(_yaml.MAX_BYTES + 1)
        if len(raw) > _yaml.MAX_BYTES:
            raise SpecError(f"file is larger than {_yaml.MAX_BYTES} bytes", path=shown)
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise SpecError("no such file", path=shown) from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=shown) from None
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", path=shown) from None
    own: dict[tuple[Any, ...], Mark] = {}
    data = _yaml.load(text, shown, own, lambda v, plain, p, m: _interpolate(
        v, plain, p, m, env, secrets))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError("a spec must be a mapping of keys to values", path=shown, line=1, col=1)
    base_rel = data.get("extends")
    if base_rel is not None:
        src = SpecSource(path, root, own)
        if not isinstance(base_rel, str):
            raise src.error(("extends",), "must be a path to another spec")
        base_path = src.resolve(base_rel, ("extends",))
        if base_path in stack or base_path == path:
            raise src.error(("extends",), f"extends cycle: {' -> '.join(_display(p) for p in (*stack, path, base_path))}")
        base_marks: dict[tuple[Any, ...], Mark] = {}
        base = _read(base_path, root, env, secrets, base_marks, (*stack, path))
        base.pop("extends", None)
        data = _merge(base, {k: v for k, v in data.items() if k != "extends"})
        marks.update(base_marks)
    marks.update(own)
    return data


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _apply_overrides(data: dict[str, Any], overrides: Iterable[str],
                     marks: dict[tuple[Any, ...], Mark]) -> None:
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or "" in key.split("."):
            raise SpecError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. "
                            "--set loop.max_iterations=3")
        value = _yaml.load(raw, f"--set {key}", {}) if raw.strip() else ""
        parts: list[Any] = [int(p) if p.isdigit() else p for p in key.split(".")]
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            nxt = node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) \
                else node.get(part) if isinstance(node, dict) else None
            if nxt is None:
                if not isinstance(node, dict):
                    raise SpecError(f"cannot set {key!r}: {format_path(tuple(parts[:i]))} is not a mapping",
                                    path="--set")
                nxt = node[part] = {}
            node = nxt
        if isinstance(node, list) and isinstance(parts[-1], int) and parts[-1] < len(node):
            node[parts[-1]] = value
        elif isinstance(node, dict):
            node[parts[-1]] = value
        else:
            why = "no such list item" if isinstance(node, list) else \
                f"{format_path(tuple(parts[:-1]))} is not a mapping"
            raise SpecError(f"cannot set {key!r}: {why}", path="--set")
        target = tuple(parts)
        for stale in [p for p in marks if p[:len(target)] == target]:
            del marks[stale]  # the file's marks under a replaced value would point at old lines
        marks[target] = Mark("--set", 0, 0)


# ---------------------------------------------------------------------------- validation

def _fields_by_alias(model: type[BaseModel]) -> dict[str, Any]:
    return {f.alias or name: f for name, f in model.model_fields.items()}


def _unwrap(tp: Any) -> Any:
    """The model inside `X | None`, `Annotated[X, ...]`; anything else unchanged."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        models = [a for a in inner if isclass(a) and issubclass(a, BaseModel)]
        return models[0] if models else inner[0] if len(inner) == 1 else tp
    return tp


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at `loc`, if there is one."""
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if isclass(tp) and issubclass(tp, BaseModel):
            field_info = _fields_by_alias(tp).get(part)
            if field_info is None:
                return None
            tp = field_info.annotation
        elif get_origin(tp) in (list, dict):
            tp = get_args(tp)[-1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isclass(tp) and issubclass(tp, BaseModel) else None


def _data_loc(loc: tuple[Any, ...], data: Any, missing: bool) -> tuple[Any, ...]:
    """`loc` without pydantic's union branch names (`tools[0].str`), by walking the data."""
    out: list[Any] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif missing and i == len(loc) - 1:
            pass
        else:
            continue
        out.append(part)
    return tuple(out)


def _reason(err: Any) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "missing":
        return "missing required key"
    if kind == "value_error":
        return str(err.get("ctx", {}).get("error", msg))
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "should be a mapping"
    msg = re.sub(r"^(?:Input|String|List|Dictionary|Value|Number)\s+should", "should", msg)
    return msg.replace("should be", "must be", 1) if kind in ("literal_error", "enum") else msg


def _pydantic_errors(exc: ValidationError, src: SpecSource, model: type[BaseModel],
                     prefix: tuple[Any, ...] = (), data: Any = None,
                     also: Iterable[str] = ()) -> list[SpecError]:
    """One SpecError per problem, at the key's mark; `also` are keys allowed beside the model's."""
    reasons: dict[tuple[Any, ...], list[str]] = {}
    for err in exc.errors(include_input=False, include_url=False):
        loc = tuple(p for p in err["loc"] if isinstance(p, (str, int)))
        if data is not None:
            loc = _data_loc(loc, data, err["type"] == "missing")
        if err["type"] == "extra_forbidden" and loc:
            parent = _model_at(model, loc[:-1])
            names = [*(_fields_by_alias(parent) if parent else {}), *(also if not loc[:-1] else ())]
            hint = did_you_mean(str(loc[-1]), names)
            reason = f"unknown key {loc[-1]!r}{hint}"
            if parent and not hint:
                reason += f"; allowed: {', '.join(names)}" if names else "; it takes no options"
        else:
            reason = _reason(err)
        if reason not in reasons.setdefault(loc, []):
            reasons[loc].append(reason)
    return [src.error(prefix + loc, " or ".join(rs)) for loc, rs in reasons.items()]


def _redact_errors(exc: SpecError, secrets: set[str]) -> None:
    """Mask secret values in error reasons (an unknown tool named by `${SOME_TOKEN}`, say)."""
    if not secrets:
        return
    from .redact import redact_text

    for e in getattr(exc, "errors", [exc]):
        e.reason = redact_text(e.reason, secrets)
        e.args = (e.render(),)
    exc.reason = redact_text(exc.reason, secrets)
    exc.args = (exc.render(),)


def load_spec(path: str | os.PathLike[str], overrides: Iterable[str] = (),
              env: Mapping[str, str] | None = None, *, check: bool = True,
              _stack: tuple[Path, ...] = ()) -> AgentSpec:
    """Read, interpolate, merge and validate a spec; raise SpecError naming file, line and key.

    `overrides` are `KEY.PATH=VALUE` strings (the CLI's `--set`). With `check`, tool names,
    model providers, memory backends, templates and sub-agents are checked against the
    installed plugins too. No error message shows a value that came from a secret variable.
    """
    spec_path = Path(path).resolve()
    src = SpecSource(spec_path, find_root(spec_path), env=env)
    try:
        return _load(src, overrides, check, _stack)
    except SpecError as exc:
        _redact_errors(exc, src.secrets)
        raise


def _load(src: SpecSource, overrides: Iterable[str], check: bool,
          stack: tuple[Path, ...]) -> AgentSpec:
    env = os.environ if src.env is None else src.env
    data = _read(src.path, src.root, env, src.secrets, src.marks, ())
    data.pop("extends", None)
    src.overrides = list(overrides)
    _apply_overrides(data, src.overrides, src.marks)
    src.raw = data
    src.digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    try:
        spec = AgentSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecErrors(_pydantic_errors(exc, src, AgentSpec, data=data)) from None
    spec._source = src
    if check:
        from .checks import check_spec

        check_spec(spec, _stack=(*stack, src.path))
    return spec


def is_test_file(path: Path) -> bool:
    """Whether a file holds agent tests (`*.test.yaml`, `*.test.yml`) rather than a spec."""
    return path.name.endswith((".test.yaml", ".test.yml"))


def validate_paths(paths: Iterable[str | os.PathLike[str]]) -> tuple[int, list[SpecError]]:
    """Validate every spec file under `paths`; return how many were read and the problems.

    Agent test files (`*.test.yaml`) are checked as test files, with the spec they test. In a
    folder, files and folders whose names start with a dot are skipped.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml")
                                and q.is_file()
                                and not any(part.startswith(".")
                                            for part in q.relative_to(p).parts)))
        else:
            files.append(p)
    problems: dict[str, SpecError] = {}  # a spec's problem found again through its test file
    for f in files:
        try:
            if is_test_file(f):
                from .agent_tests import load_test_file

                load_test_file(f)
            else:
                load_spec(f)
        except SpecErrors as exc:
            problems.update((e.render(), e) for e in exc.errors)
        except SpecError as exc:
            problems[exc.render()] = exc
    return len(files), list(problems.values())


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file, with field descriptions, for editors."""
    schema = AgentSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "yaml-agent-runner spec"
    return schema


def explain(spec: AgentSpec) -> str:
    """The fully resolved spec as YAML, secrets masked."""
    import yaml

    from .redact import redact_value

    data = spec.model_dump(mode="json", by_alias=True, exclude={"extends"})
    return yaml.safe_dump(redact_value(data, spec.source.secrets), sort_keys=False,
                          allow_unicode=True)
