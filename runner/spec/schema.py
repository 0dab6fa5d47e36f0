"""The spec's data model: pydantic models whose field docstrings become the JSON Schema
descriptions, so an editor can validate and complete `agents/*.yaml`."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr,
                      SerializerFunctionWrapHandler, model_serializer, model_validator)

from .locate import SpecSource

__all__ = ["StrictModel", "AgentSpec", "ModelSpec", "FallbackSpec", "PromptSpec", "LoopSpec",
           "BudgetSpec", "MemorySpec", "SummarizeSpec", "RecallSpec", "CheckpointSpec",
           "TraceSpec", "OtlpSpec", "OutputSpec", "InputSpec", "SequenceStep", "ReflectionSpec",
           "CommonToolOptions", "COMMON_TOOL_KEYS", "DEFAULT_MODEL", "json_schema", "valid_regex"]

DEFAULT_MODEL = "local/gemma-3-270m"


class StrictModel(BaseModel):
    """Unknown keys and silent coercions are errors; field docstrings document the schema."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)


API_KEY_ENV = r"^[A-Za-z_][A-Za-z0-9_]*$"


class FallbackSpec(StrictModel):
    """A model tried when the ones before it fail for good, with its own connection settings:
    it never gets the primary's `api_base`, key or `options`."""

    id: str
    """A model id, as in `model.id`."""
    api_base: str | None = None
    """Base URL of its server; unset: its provider's own (as LiteLLM finds it)."""
    api_key_env: str | None = Field(None, pattern=API_KEY_ENV)
    """Name of the variable that holds its key; unset: its provider's own variable, or no key
    at all when `api_base` is set."""
    options: dict[str, Any] = {}
    """Its extra provider parameters (the primary's `options` are not passed on)."""

    @model_serializer(mode="wrap")
    def _as_id(self, handler: SerializerFunctionWrapHandler) -> Any:
        """A fallback with nothing but an id is written back as the id alone."""
        return self.id if self.model_fields_set <= {"id"} else handler(self)


def _fallback_entry(value: Any) -> Any:
    if isinstance(value, str):
        return {"id": value}
    if not isinstance(value, (dict, FallbackSpec)):
        raise ValueError("a fallback is a model id (- openai/gpt-4o-mini) or a mapping with "
                         "id: and its own api_base:, api_key_env:")
    return value


FallbackEntry = Annotated[FallbackSpec, BeforeValidator(
    _fallback_entry, json_schema_input_type=str | FallbackSpec)]


class ModelSpec(StrictModel):
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
    fallbacks: list[FallbackEntry] = []
    """Tried in order when this model fails for good: a model id (its provider's own server and
    key) or `{id, api_base, api_key_env, options}`; never with this model's api_base, key or
    options."""
    api_base: str | None = None
    """Base URL of an OpenAI-compatible or self-hosted server."""
    api_key_env: str | None = Field(None, pattern=API_KEY_ENV)
    """Name of the environment variable that holds the API key (never the key itself); with
    `api_base` and no `api_key_env`, no key from the environment is sent."""
    stop: list[str] = Field([], max_length=4)
    """Extra stop sequences (a ReAct agent always stops before an invented `Observation:`)."""
    stream: bool = False
    """Stream tokens from the provider (only worth it when a person watches)."""
    options: dict[str, Any] = {}
    """Extra provider parameters passed through unchanged (`top_p`, `seed`, plugin options)."""
    max_reply_bytes: int = Field(16 * 1024 * 1024, ge=1024, le=1024 ** 3)
    """Largest reply read from the provider, in bytes, counted before and after decompression
    (a stream counts all its events); a larger reply fails the call."""

    def for_fallback(self, i: int) -> ModelSpec:
        """The settings fallback `i` is called with: this model's call settings, and the
        fallback's own id, api_base, api_key_env and options."""
        fb = self.fallbacks[i]
        return self.model_copy(update={"id": fb.id, "api_base": fb.api_base,
                                       "api_key_env": fb.api_key_env, "options": fb.options,
                                       "fallbacks": []})


class ExamplesPoolSpec(StrictModel):
    """Few-shot examples of which each run's prompt gets the `k` most like its question."""

    k: int = Field(3, ge=1, le=20)
    """How many examples a prompt gets."""
    examples: list[str] = Field(min_length=1)
    """Transcripts in the loop's format, each with a `Question:` line, which is what the
    run's question is matched against (BM25 over the words, numbers left out)."""


class PromptSpec(StrictModel):
    """The master prompt."""

    template: str | None = None
    """A Jinja2 template file, relative to this spec; default: the built-in ReAct template."""
    text: str | None = None
    """An inline Jinja2 template, instead of `template`."""
    instructions: str = ""
    """What the agent is for and how it should behave; shown at the top of the prompt."""
    examples: list[str] | None = None
    """Few-shot transcripts in the loop's format; replace the built-in examples."""
    examples_pool: ExamplesPoolSpec | None = None
    """More examples than a prompt should carry: each run gets the `k` most like its
    question, with all of `examples`, in order of likeness (`{k: 3, examples: [...]}`)."""
    variables: dict[str, Any] = {}
    """Extra values the template can use (passed as data, never rendered as templates)."""


class LoopSpec(StrictModel):
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
    check_answer: bool = True
    """A final answer whose numbers all differ from the last tool result, when that is one
    number (the calculator said 216, the answer says 180), is sent back to the model once."""


class BudgetSpec(StrictModel):
    """Limits on what one run may spend; any left out is unlimited."""

    tokens: int | None = Field(None, ge=1)
    """Total prompt and completion tokens."""
    cost_usd: float | None = Field(None, gt=0)
    """Total cost, where LiteLLM knows the model's price."""
    wall_s: float | None = Field(None, gt=0)
    """Wall-clock seconds for the whole run."""
    tool_calls: int | None = Field(None, ge=0)
    """Number of tool calls."""


class SummarizeSpec(StrictModel):
    """Older turns of a long conversation replaced in the prompt by a model's summary (the
    store keeps every message)."""

    after_tokens: int = Field(3000, ge=100, le=10_000_000)
    """Summarize once the session's history passes this many tokens (about 4 characters
    each)."""
    keep_tokens: int | None = Field(None, ge=1)
    """The most recent turns kept as they are, up to this many tokens; default: a third of
    `after_tokens`."""
    model: str | None = None
    """The model that writes the summary; default: the agent's own."""
    max_tokens: int = Field(400, ge=16, le=100_000)
    """Longest summary, in tokens."""


class RecallSpec(StrictModel):
    """Earlier turns of the session most like the question, brought back into the prompt
    beside the recent window (embedded with the semantic search's model)."""

    k: int = Field(4, ge=1, le=50)
    """How many earlier turns to bring back."""
    min_score: float = Field(0.2, ge=-1, le=1)
    """A turn less similar than this (cosine) is not brought back."""


class MemorySpec(BaseModel):
    """Conversation memory kept across runs of one session."""

    model_config = ConfigDict(extra="allow", strict=True, use_attribute_docstrings=True)
    backend: str = "buffer"
    """`buffer` (in-process), `sqlite`, `none`, or a plugin's backend."""
    session: str | None = Field(None, min_length=1)
    """Which conversation to continue; `--session` overrides it. Without one, each run
    starts with an empty history and keeps nothing for the next."""
    window: int | None = Field(None, ge=1)
    """Keep only the last N messages in the prompt (with `summarize`, the summary decides
    what is kept whole instead)."""
    summarize: SummarizeSpec | None = None
    """Summarize older turns once the history is long (`{after_tokens: 3000}`); the summary
    call is traced and counted in the run's usage and budget."""
    recall: RecallSpec | None = None
    """Bring back the earlier turns most like the question (`{k: 4}`), beside the recent
    `window` (or after the summary); needs `window` or `summarize`."""

    @model_validator(mode="after")
    def _recall_needs_a_cut(self) -> MemorySpec:
        if self.recall is not None and self.window is None and self.summarize is None:
            raise ValueError("recall brings back turns left out of the prompt: give window: "
                             "(or summarize:) too")
        return self


class CheckpointSpec(StrictModel):
    """Where each run's state is committed after every step, so `runner resume` can continue it."""

    enabled: bool = True
    """Commit the run's state after every step."""
    backend: Literal["sqlite", "redis"] = "sqlite"
    """`sqlite` (the file at `path`) or `redis` (the server at `url`: a run started by one
    worker can be resumed by another)."""
    path: str = ".runner/runs.db"
    """SQLite file, relative to the current directory."""
    url: str | None = Field(None, pattern=r"^(redis|rediss|unix)://")
    """The Redis server (`redis://[:password@]host:port/db`; put the password in a `${VAR}`)."""
    lease_s: float = Field(120.0, gt=0, le=86400)
    """Redis: a running run whose last save is older than this, on another host, counts as
    abandoned, so another worker may resume it."""
    timeout_s: float = Field(5.0, gt=0, le=300)
    """Redis: deadline of one operation, connecting included."""

    @model_validator(mode="after")
    def _url_for_redis(self) -> CheckpointSpec:
        if self.backend == "redis" and not self.url:
            raise ValueError("backend: redis needs url: (redis://host:6379/0)")
        return self



def valid_regex(pattern: str) -> str:
    """A pydantic validator: the pattern compiles as a Python regular expression."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return pattern


class OtlpSpec(StrictModel):
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


class TraceSpec(StrictModel):
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


class OutputSpec(StrictModel):
    """A structured final answer."""

    json_schema: dict[str, Any] = Field(alias="schema")
    """JSON Schema the final answer must satisfy (the answer is parsed as JSON)."""


class InputSpec(StrictModel):
    """A named input of a chain (`--input NAME=VALUE`)."""

    description: str = ""
    """What the input is for."""
    default: Any = None
    """Used when the input is not given; without it the input is required."""
    required: bool = True
    """Whether the run fails when the input is missing and has no default."""


IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"


class SequenceStep(StrictModel):
    """One step of a pipeline (`kind: sequence`): an agent or chain whose answer the next
    step takes."""

    agent: str
    """The step's spec (an agent, a chain or another sequence), relative to this spec."""
    input: str | None = None
    """The step's input, a Jinja2 template over the pipeline's `input`, its named inputs and
    the earlier steps' answers (by their `as` names, and `previous`); default: the previous
    step's answer (the pipeline's input for the first step)."""
    inputs: dict[Annotated[str, Field(pattern=IDENTIFIER)], str] | None = None
    """A chain's named inputs, each a template like `input`, instead of `input`."""
    as_: str | None = Field(None, alias="as", pattern=IDENTIFIER)
    """The name later steps' templates know this step's answer by; default: the step agent's
    name, where it is a valid name."""
    output: OutputSpec | None = None
    """A JSON Schema this step's answer must satisfy (besides its own spec's output.schema);
    a step whose answer does not fit fails the pipeline there, and a resume retries it."""

    @model_validator(mode="after")
    def _one_input(self) -> SequenceStep:
        if self.input is not None and self.inputs is not None:
            raise ValueError("give input: or inputs:, not both")
        return self


class ReflectionSpec(StrictModel):
    """A critic reviews each final answer against the criteria; until it approves or the
    rounds run out, its problems go back to the agent, which revises."""

    critic: str | None = None
    """The critic's spec (relative to this spec); its answer is the verdict. Without it, the
    agent's own model reviews with the built-in critic prompt (and `prompt`)."""
    prompt: str | None = None
    """Instructions for the built-in critic, instead of a critic spec."""
    criteria: list[Annotated[str, Field(min_length=1)]] = []
    """What a good answer does; each draft is checked against them."""
    max_rounds: int = Field(2, ge=1, le=10)
    """Most reviews: after the last one the run ends with the latest draft."""

    @model_validator(mode="after")
    def _one_critic(self) -> ReflectionSpec:
        if self.critic is not None and self.prompt is not None:
            raise ValueError("give critic: (a spec) or prompt: (the built-in critic's "
                             "instructions), not both")
        return self


def _tool_entry(value: Any) -> Any:
    if not isinstance(value, (str, dict)):
        raise ValueError("a tool is a name (- calculator) or a mapping with one key "
                         "(- search: {path: kb/})")
    return value


ToolEntry = Annotated[Union[str, dict[str, Any]], BeforeValidator(_tool_entry)]


class AgentSpec(StrictModel):
    """An agent (a ReAct loop with tools) or a chain (one templated model call)."""

    version: Literal[1] = 1
    """Spec format version."""
    kind: Literal["agent", "chain", "sequence"] = "agent"
    """`agent` runs the tool loop; `chain` renders its prompt and makes one model call;
    `sequence` runs its `steps` in order, each step's answer the next one's input."""
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
    steps: list[SequenceStep] = []
    """The pipeline's steps (`kind: sequence`), run in order."""
    reflection: ReflectionSpec | None = None
    """A critic that reviews the answer until it approves (`{critic: critic.yaml,
    max_rounds: 2, criteria: [...]}`)."""
    handoffs: list[str] = []
    """Agents (spec paths) this agent may hand the conversation to; the one it picks answers
    the user directly."""

    _source: SpecSource = PrivateAttr()

    @property
    def source(self) -> SpecSource:
        return self._source




class CommonToolOptions(StrictModel):
    """Keys every tools entry accepts besides the tool's own options."""

    name: str | None = None
    """The name the model sees, when it should differ from the tool's."""
    timeout_s: float | None = Field(None, gt=0, le=3600)
    """Deadline for one call of this tool, instead of loop.tool_timeout_s."""
    description: str | None = None
    """What the model is told the tool does, instead of the tool's own description."""
    max_output_chars: int | None = Field(None, ge=1, le=10_000_000)
    """Longer output of this tool is cut to this size, instead of loop.max_observation_chars."""
    confirm: bool | None = None
    """Ask before each call (see loop.approve); default: what the tool's plugin says."""
    idempotent: bool | None = None
    """false: a call interrupted by a crash is not re-run on resume; the model is told instead."""
    isolation: Literal["thread", "process"] | None = None
    """process: each call runs in its own process, killed with its children at the timeout (for
    CPU-bound tools that may hold the GIL); default: what the tool's plugin says."""


COMMON_TOOL_KEYS = frozenset(CommonToolOptions.model_fields)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file, with field descriptions, for editors."""
    schema = AgentSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "yaml-agent-runner spec"
    return schema

