"""The spec wing: an agent's YAML read into a validated pydantic model, with every problem
located at `path:line:col: key`. It knows no plugin (see `runner.resolve`)."""

from __future__ import annotations

from ._yaml import Mark
from ._yaml import load as load_yaml
from .load import explain, is_test_file, load_spec, read_text
from .locate import SpecSource, find_root, pydantic_errors, redact_errors, shown_path
from .schema import (COMMON_TOOL_KEYS, DEFAULT_MODEL, AgentSpec, BudgetSpec, CheckpointSpec,
                     CommonToolOptions, InputSpec, LoopSpec, MemorySpec, ModelSpec, OtlpSpec,
                     OutputSpec, PromptSpec, StrictModel, TraceSpec, json_schema,
                     valid_regex)

__all__ = ["load_spec", "explain", "is_test_file", "json_schema", "SpecSource", "find_root",
           "shown_path", "pydantic_errors", "redact_errors", "AgentSpec", "ModelSpec", "PromptSpec", "LoopSpec",
           "BudgetSpec", "MemorySpec", "CheckpointSpec", "TraceSpec", "OtlpSpec", "OutputSpec",
           "InputSpec", "CommonToolOptions", "COMMON_TOOL_KEYS", "DEFAULT_MODEL", "StrictModel",
           "valid_regex", "Mark", "load_yaml", "read_text"]
