"""The testing wing, shipped for plugin authors too: a scripted OpenAI-compatible server and
a fake clock (`server`), record and replay of model exchanges (`recording`), and the YAML
agent tests of `runner test` (`cases`).

    from runner.testing import ScriptedOpenAIServer, FakeClock

Names are imported on first use, so that loading `runner.testing.recording` does not start
aiohttp's server machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["ScriptedOpenAIServer", "FakeClock", "tool_call_responder", "http_date", "FAULTS"]

if TYPE_CHECKING:
    from .server import FAULTS, FakeClock, ScriptedOpenAIServer, http_date, tool_call_responder


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'runner.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(".server", __name__), name)
