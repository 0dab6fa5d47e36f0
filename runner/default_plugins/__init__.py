"""The built-in plugins; they register through the same hooks a third-party package uses."""

from __future__ import annotations

from . import agent_tool, calculator, fake_model, local_model, memory_backends

BUILTINS = [calculator, agent_tool, fake_model, local_model, memory_backends]
