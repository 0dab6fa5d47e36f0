"""Plugins: built-ins through the same hooks, inline plugins, entry points, conflicts,
broken plugins, the allowlist, and `runner plugins`."""

from __future__ import annotations

import inspect
import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

import runner
from runner import hookspecs
from runner.errors import PluginError
from runner.plugins import registry

from conftest import run_cli


def test_every_hook_is_documented_in_one_line() -> None:
    hooks = [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction)
             if hasattr(f, "yaml_agent_runner_spec")]
    assert {h.__name__ for h in hooks} >= {"register_tools", "register_models",
                                          "register_memory", "prepare_jinja2_environment",
                                          "on_event"}
    for h in hooks:
        doc = inspect.getdoc(h) or ""
        assert doc and "\n" not in doc, f"{h.__name__} needs a one-line docstring"


def test_builtins_register_through_hooks() -> None:
    reg = registry()
    assert reg.tools["calculator"].origin == "built-in"
    assert {"fake", "local"} <= set(reg.models)
    assert {"buffer", "sqlite"} <= set(reg.memory)


class _Inline:
    """A plugin defined in a test: a tool, a model provider, and an event observer."""

    def __init__(self) -> None:
        self.events: list[str] = []

    @runner.hookimpl
    def register_tools(self, register: Any) -> None:
        @runner.tool
        async def shout(text: str) -> str:
            """Returns the text in capitals."""
            return text.upper()

        register(shout)

    @runner.hookimpl
    def on_event(self, event: Any) -> None:
        self.events.append(event.kind)

    @runner.hookimpl
    def prepare_jinja2_environment(self, env: Any) -> None:
        env.filters["shout"] = str.upper


@pytest.fixture
def inline() -> Any:
    plugin = _Inline()
    name = runner.register_plugin(plugin, name="inline-test")
    yield plugin
    runner.unregister_plugin(name)


def test_inline_plugin_tool_events_and_jinja(inline: _Inline, tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(textwrap.dedent("""\
        version: 1
        model:
          id: fake/script
          options: {replies: ["Action: shout[hello]", "Final Answer: done"]}
        prompt: {text: "{{ input | shout }}\\n{% for s in steps %}{{ s.observation }}{% endfor %}"}
        loop: {style: react}
        tools: [shout]
        memory: {backend: none}
        """))
    result = runner.run_agent(spec, "question")
    assert result.status == "finished"
    assert result.steps[0].observation == "HELLO"
    assert result.messages[0]["content"].startswith("QUESTION")
    assert inline.events[0] == "run_started" and inline.events[-1] == "run_ended"
    assert "action" in inline.events and "observation" in inline.events
    assert registry().tools["shout"].origin == "registered in code"


def test_unregistered_plugin_is_gone(tmp_path: Path) -> None:
    plugin = _Inline()
    name = runner.register_plugin(plugin, name="inline-gone")
    assert "shout" in registry().tools
    runner.unregister_plugin(name)
    assert "shout" not in registry().tools


def test_two_plugins_registering_one_tool_name_is_an_error_naming_both() -> None:
    class Clash:
        @runner.hookimpl
        def register_tools(self, register: Any) -> None:
            @runner.tool(name="calculator")
            def other(x: str) -> str:
                """Not the real calculator."""
                return x

            register(other)

    name = runner.register_plugin(Clash(), name="clash-plugin")
    try:
        with pytest.raises(PluginError) as err:
            registry()
        assert "calculator" in str(err.value)
        assert "clash-plugin" in str(err.value)
        assert "runner.default_plugins.calculator" in str(err.value)
    finally:
        runner.unregister_plugin(name)


def test_a_tool_option_named_like_a_common_key_is_refused() -> None:
    # resolve hands `timeout_s` (and the other common keys) to every entry, so an option of
    # the same name could never be set from a spec
    from pydantic import BaseModel

    class Options(BaseModel):
        timeout_s: float = 15.0

    class Shadow:
        @runner.hookimpl
        def register_tools(self, register: Any) -> None:
            register(runner.ToolFactory("shadowed", "A tool.", Options,
                                        lambda options, ctx: None))

    name = runner.register_plugin(Shadow(), name="shadow-plugin")
    try:
        with pytest.raises(PluginError) as err:
            registry()
        assert "'shadowed' of plugin shadow-plugin" in str(err.value)
        assert "named timeout_s" in str(err.value)
    finally:
        runner.unregister_plugin(name)


def _fake_dist(root: Path, name: str, module: str, body: str) -> None:
    """A real installed distribution (dist-info with an entry point) on a PYTHONPATH dir."""
    (root / f"{module}.py").write_text(body)
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[yaml_agent_runner]\n{name} = {module}\n")


def test_a_plugin_that_fails_to_import_is_a_spec_error(tmp_path: Path) -> None:
    _fake_dist(tmp_path, "runner-broken", "runner_broken", "import no_such_module_xyz\n")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = run_cli("plugins", env=env)
    assert proc.returncode == 2
    assert "runner-broken" in proc.stderr and "ModuleNotFoundError" in proc.stderr
    assert "Traceback" not in proc.stderr
    # the allowlist leaves it out
    proc = run_cli("plugins", env={**env, "RUNNER_PLUGINS": "units"})
    assert proc.returncode == 0, proc.stderr
    assert "runner-broken" not in proc.stdout and "units" in proc.stdout


def test_runner_plugins_lists_what_each_provides_and_where_from() -> None:
    proc = run_cli("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows["units"] == {"origin": "runner-units 0.1.0", "tools": ["units"], "models": [],
                             "memory": []}
    assert rows["runner.default_plugins.calculator"]["tools"] == ["calculator"]
    proc = run_cli("plugins")
    assert "units  (runner-units 0.1.0)" in proc.stdout and "tools: units" in proc.stdout


def test_provider_snapshot_matches_installed_litellm() -> None:
    """validate checks provider prefixes without importing LiteLLM, from a snapshot."""
    from runner.models.providers import LITELLM_PROVIDERS
    from runner.models.litellm import import_litellm

    litellm = import_litellm()
    live = {getattr(p, "value", p) for p in litellm.provider_list} - {"local"}
    assert live == set(LITELLM_PROVIDERS) - {"local"}


def test_litellm_is_a_default_plugin_whose_prefixes_a_plugin_can_take(tmp_path: Path) -> None:
    """The LiteLLM adapter registers every LiteLLM provider prefix like any plugin would;
    a plugin registering one of them takes its place, with no clash."""
    from runner.models.litellm import LiteLLMModel
    from runner.models.providers import LITELLM_PROVIDERS

    reg = registry()
    assert reg.models["openai"].value is LiteLLMModel and reg.models["openai"].family == "LiteLLM"
    assert reg.models[""].value is LiteLLMModel  # bare ids such as gpt-4o-mini
    assert set(LITELLM_PROVIDERS) - {"local"} <= set(reg.models)
    assert reg.plugins["runner.models.litellm"] == "built-in"

    class Canned:
        def __init__(self, spec: Any, model_id: str) -> None:
            self.id = model_id

        def supports_tools(self) -> bool:
            return False

        async def complete(self, messages: Any, **kw: Any) -> Any:
            from runner.models import Completion

            return Completion(f"Final Answer: canned by {self.id}")

    class Takeover:
        @runner.hookimpl
        def register_models(self, register: Any) -> None:
            register("openai", Canned)

    name = runner.register_plugin(Takeover(), name="takeover")
    try:
        assert registry().models["openai"].plugin == "takeover"
        spec = tmp_path / "s.yaml"
        spec.write_text("version: 1\nmodel: {id: openai/gpt-4o-mini}\nmemory: {backend: none}\n"
                        f"checkpoint: {{enabled: false}}\ntrace: {{enabled: false}}\n")
        result = runner.run_agent(spec, "q")
        assert result.answer == "canned by openai/gpt-4o-mini", result.error
        assert registry().models["anthropic"].value is LiteLLMModel  # the rest stay LiteLLM's
    finally:
        runner.unregister_plugin(name)
    assert registry().models["openai"].value is LiteLLMModel


def test_runner_plugins_lists_the_litellm_adapter() -> None:
    proc = run_cli("plugins")
    assert proc.returncode == 0, proc.stderr
    assert "runner.models.litellm  (built-in)" in proc.stdout
    assert re.search(r"model providers: every LiteLLM provider \(\d+ prefixes: openai, "
                     r"anthropic, ollama, hosted_vllm, \.\.\.\) and bare model ids", proc.stdout)
