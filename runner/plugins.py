"""Loading plugins: the built-ins, entry points of the `yaml_agent_runner` group (lazily, on
first use, filtered by $RUNNER_PLUGINS), and what each of them registers.

Only `runner.resolve` (checking a spec, handing the agent what it needs) and `runner plugins`
read the registry; the composition root, `runner.agent`, fires the lifecycle hooks it is
handed. Nothing else knows the plugin manager."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import PluginError

__all__ = ["GROUP", "BUILTINS", "Registry", "Registration", "plugin_manager", "registry",
           "hooks", "register_plugin", "unregister_plugin"]

GROUP = "yaml_agent_runner"
BUILTIN = "built-in"
BUILTINS = (
    "runner.default_plugins.calculator",
    "runner.default_plugins.agent_tool",
    "runner.default_plugins.fake_model",
    "runner.default_plugins.local_model",
    "runner.default_plugins.memory_backends",
    "runner.default_plugins.files",
    "runner.default_plugins.search",
    "runner.default_plugins.http_get",
    "runner.default_plugins.mcp",
    "runner.models.litellm",
)
"""The built-in plugins, by module name: they register through the same hooks as any other."""


@dataclass
class Registration:
    """Something a plugin provided, and where it came from."""

    name: str
    value: Any
    plugin: str
    origin: str
    extra: dict[str, Any] = field(default_factory=dict)
    family: str | None = None
    """A model prefix registered as one of a large family (LiteLLM's providers): another
    plugin's registration of the same prefix takes its place."""


@dataclass
class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    tools: dict[str, Registration] = field(default_factory=dict)
    models: dict[str, Registration] = field(default_factory=dict)
    memory: dict[str, Registration] = field(default_factory=dict)
    plugins: dict[str, str] = field(default_factory=dict)
    """plugin name -> origin (built-in, a distribution and version, or code)."""


_pm: pluggy.PluginManager | None = None
_registry: Registry | None = None
_origins: dict[str, str] = {}


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built-ins and entry points loaded on first call."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager(GROUP)
        pm.add_hookspecs(hookspecs)
        for name in BUILTINS:
            pm.register(importlib.import_module(name), name=name)
            _origins[name] = BUILTIN
        _load_entry_points(pm)
        _pm = pm
    return _pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allow = os.environ.get("RUNNER_PLUGINS")
    allowed = None if allow is None else {a.strip() for a in allow.split(",") if a.strip()}
    for ep in metadata.entry_points(group=GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        dist = getattr(ep, "dist", None)
        origin = f"{dist.name} {dist.version}" if dist else ep.value
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not look like a missing one
            raise PluginError(f"plugin {ep.name!r} ({origin}, entry point {ep.value}) failed to "
                              f"import: {type(exc).__name__}: {exc}; uninstall it or leave it out "
                              f"of RUNNER_PLUGINS") from None
        if pm.is_registered(plugin):
            continue
        pm.register(plugin, name=ep.name)
        _origins[ep.name] = origin


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object (a module or class with hookimpls) from code."""
    pm = plugin_manager()
    registered = pm.register(plugin, name=name)
    assert registered is not None
    _origins[registered] = "registered in code"
    _invalidate()
    return registered


def unregister_plugin(name_or_plugin: Any) -> None:
    """Remove a plugin registered with register_plugin."""
    pm = plugin_manager()
    if isinstance(name_or_plugin, str):
        pm.unregister(name=name_or_plugin)
    else:
        pm.unregister(name_or_plugin)
    _invalidate()


def _invalidate() -> None:
    global _registry
    _registry = None


def _collect(pm: pluggy.PluginManager, hook: str, table: dict[str, Registration], kind: str,
             make: Callable[..., Registration]) -> None:
    for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):
        plugin = impl.plugin_name

        def register(*args: Any, _plugin: str = plugin, **kwargs: Any) -> None:
            reg = make(*args, plugin=_plugin, origin=_origins.get(_plugin, "?"), **kwargs)
            old = table.get(reg.name)
            if old is not None and old.plugin != reg.plugin:
                # a provider family's prefix (LiteLLM's) gives way to a plugin's own
                if old.family and not reg.family:
                    pass
                elif reg.family and not old.family:
                    return
                else:
                    raise PluginError(f"{kind} {reg.name!r} is registered by two plugins: "
                                      f"{old.plugin} ({old.origin}) and {reg.plugin} "
                                      f"({reg.origin})")
            table[reg.name] = reg

        impl.function(register=register)


def registry() -> Registry:
    """What the installed plugins provide (built once, rebuilt after register_plugin)."""
    global _registry
    if _registry is None:
        from .spec import COMMON_TOOL_KEYS
        from .tools import as_factory

        pm = plugin_manager()
        reg = Registry(plugins={name: _origins.get(name, "?") for name, _ in pm.list_name_plugin()})

        def tool(t: Any, *, plugin: str, origin: str) -> Registration:
            f = as_factory(t)
            shadowed = sorted(COMMON_TOOL_KEYS & set(getattr(f.options, "model_fields", ())))
            if shadowed:  # resolve gives these keys to every entry: the option is unreachable
                raise PluginError(f"tool {f.name!r} of plugin {plugin} ({origin}) has an option "
                                  f"named {', '.join(shadowed)}, a key every tools entry "
                                  f"already takes ({', '.join(sorted(COMMON_TOOL_KEYS))}); "
                                  f"the plugin must name it otherwise")
            return Registration(f.name, f, plugin, origin)

        def model(prefix: str, factory: Any, *, plugin: str, origin: str,
                  family: str | None = None, **extra: Any) -> Registration:
            return Registration(prefix, factory, plugin, origin, extra, family=family)

        def memory(name: str, factory: Any, options: Any = None, *, plugin: str,
                   origin: str) -> Registration:
            return Registration(name, factory, plugin, origin, {"options": options})

        _collect(pm, "register_tools", reg.tools, "tool", tool)
        _collect(pm, "register_models", reg.models, "model provider", model)
        _collect(pm, "register_memory", reg.memory, "memory backend", memory)
        _registry = reg
    return _registry


def hooks() -> Any:
    """The lifecycle hook caller (pm.hook), for the composition root."""
    return plugin_manager().hook
