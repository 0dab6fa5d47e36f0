"""Reading a spec: bounded YAML with marks -> `${VAR:-default}` -> `extends:` -> `--set`
overrides -> the pydantic model, and `explain`. Knows no plugin: checking a spec against the
installed plugins is `runner.resolve`."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .._files import TooLarge, read_bounded
from ..errors import SpecError, SpecErrors
from ..redact import SECRET_NAME, named_secrets, redact_value
from . import _yaml
from ._yaml import Mark, format_path
from .locate import (SpecSource, confined, find_root, pydantic_errors, redact_errors,
                     shown_path)
from .schema import AgentSpec

__all__ = ["load_spec", "explain", "is_test_file", "read_text", "output_path_problems",
           "MAX_EXTENDS", "OUTPUT_PATHS"]

MAX_EXTENDS = 32
"""Most base specs one spec may stand on through `extends:`, one on the next."""

OUTPUT_PATHS = (("trace", "path"), ("checkpoint", "path"), ("memory", "path"))
"""Keys naming files or folders a run writes: confined to the project root like spec paths."""

_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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


def read_text(path: Path, shown: str) -> str:
    """A spec or test file's text, bounded in size; SpecError naming `shown` otherwise."""
    try:
        return read_bounded(path, _yaml.MAX_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise SpecError("no such file", path=shown) from None
    except TooLarge as exc:
        raise SpecError(f"file is {exc.size} bytes; specs are limited to {_yaml.MAX_BYTES}",
                        path=shown) from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=shown) from None
    except OSError as exc:
        raise SpecError(exc.strerror if exc.errno == errno.EINVAL else
                        f"cannot read: {exc.strerror}", path=shown) from None


def _read_one(path: Path, env: Mapping[str, str], secrets: set[str],
              marks: dict[tuple[Any, ...], Mark]) -> dict[str, Any]:
    shown = shown_path(path)
    text = read_text(path, shown)
    data = _yaml.load(text, shown, marks, lambda v, plain, p, m: _interpolate(
        v, plain, p, m, env, secrets))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError("a spec must be a mapping of keys to values", path=shown, line=1, col=1)
    return data


def _read(path: Path, root: Path, env: Mapping[str, str], secrets: set[str],
          marks: dict[tuple[Any, ...], Mark], bases: list[Path]) -> dict[str, Any]:
    """A spec merged onto its `extends:` bases, read one after the other (a loop, not
    recursion: a chain is bounded by MAX_EXTENDS and never by the stack)."""
    chain: list[Path] = [path]
    layers: list[tuple[dict[str, Any], dict[tuple[Any, ...], Mark]]] = []
    while True:
        own: dict[tuple[Any, ...], Mark] = {}
        data = _read_one(chain[-1], env, secrets, own)
        layers.append((data, own))
        base_rel = data.pop("extends", None)
        if base_rel is None:
            break
        src = SpecSource(chain[-1], root, own)
        if not isinstance(base_rel, str):
            raise src.error(("extends",), "must be a path to another spec")
        base_path = src.resolve(base_rel, ("extends",))
        if base_path in chain:
            raise src.error(("extends",), "extends cycle: " + _chain(chain + [base_path]))
        if len(chain) > MAX_EXTENDS:
            raise src.error(("extends",), f"extends chain of more than {MAX_EXTENDS} base "
                                          f"specs ({_chain(chain + [base_path])})")
        chain.append(base_path)
    bases.extend(chain[1:])
    merged: dict[str, Any] = {}
    for data, own in reversed(layers):  # the deepest base first; each spec overrides it
        merged = _merge(merged, data)
        marks.update(own)
    return merged


def _chain(paths: list[Path]) -> str:
    shown = [shown_path(p) for p in paths]
    return " -> ".join(shown if len(shown) <= 6 else [*shown[:2], "...", *shown[-2:]])



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



def load_spec(path: str | os.PathLike[str], overrides: Iterable[str] = (),
              env: Mapping[str, str] | None = None) -> AgentSpec:
    """Read, interpolate, merge and validate a spec; raise SpecError naming file, line and key.

    `overrides` are `KEY.PATH=VALUE` strings (the CLI's `--set`). Tool names, model providers,
    memory backends, templates and sub-agents are checked by `runner.resolve.resolve`, not
    here. No error message shows a value that came from a secret variable.
    """
    spec_path = Path(path).resolve()
    src = SpecSource(spec_path, find_root(spec_path), env=env)
    try:
        return _load(src, overrides)
    except SpecError as exc:
        redact_errors(exc, src.secrets)
        raise


def _load(src: SpecSource, overrides: Iterable[str]) -> AgentSpec:
    env = os.environ if src.env is None else src.env
    data = _read(src.path, src.root, env, src.secrets, src.marks, src.bases)
    src.overrides = list(overrides)
    _apply_overrides(data, src.overrides, src.marks)
    src.secrets |= named_secrets(data, env)
    src.raw = data
    src.digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    try:
        spec = AgentSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecErrors(pydantic_errors(exc, src, AgentSpec, data=data)) from None
    spec._source = src
    problems = output_path_problems(spec)
    if problems:
        raise SpecErrors(problems)
    return spec


def _below(folder: Path, rel: str) -> bool:
    try:
        confined(folder, folder, rel)
    except ValueError:
        return False
    return True


def output_path_problems(spec: AgentSpec, *, confine_set: bool = False) -> list[SpecError]:
    """Output paths that lead out of the project root (relative ones are taken from the
    current directory, as the run will). A path the spec names is always checked; a default
    only when it would be inside the root but a symlink leads it out; one given by `--set`
    only with `confine_set` (the command line's is the caller's own choice; a test file's
    `set:` is not)."""
    src, cwd = spec.source, Path.cwd()
    problems = []
    for key in OUTPUT_PATHS:
        section = getattr(spec, key[0])
        value = getattr(section, key[1], None) if key[0] != "memory" else \
            (section.model_extra or {}).get(key[1])
        if not isinstance(value, str) or (value == ":memory:" and key[0] != "trace"):
            continue  # not a path (the backend's own check says so), or SQLite's in-memory db
        nearest = next((src.marks[key[:n]] for n in range(len(key), 0, -1)
                        if key[:n] in src.marks), None)
        by_set = nearest is not None and nearest.file == "--set"
        if by_set and not confine_set:
            continue
        field = type(section).model_fields.get(key[1])
        default = key not in src.marks and field is not None and value == field.default
        if default and (  # only a symlink can lead a default out, and only if it is used
                not getattr(section, "enabled", True)
                or not Path(os.path.normpath(cwd / value)).is_relative_to(src.root)):
            continue
        try:
            confined(src.root, cwd, value)
        except ValueError as exc:
            # a relative path that stays below the current directory, symlinks followed, is
            # where the person running it chose to be (a spec run from outside its project)
            if not os.path.isabs(value) and _below(cwd, value):
                continue
            problems.append(src.error(key, f"{exc}; output paths are relative to the current "
                                           "directory and may not leave it or the project"))
    return problems


def is_test_file(path: Path) -> bool:
    """Whether a file holds agent tests (`*.test.yaml`, `*.test.yml`) rather than a spec."""
    return path.name.endswith((".test.yaml", ".test.yml"))



def explain(spec: AgentSpec) -> str:
    """The spec as loaded (extends, ${VAR} and --set applied) as YAML, secrets masked."""
    import yaml

    data = spec.model_dump(mode="json", by_alias=True, exclude={"extends"})
    return yaml.safe_dump(redact_value(data, spec.source.secrets), sort_keys=False,
                          allow_unicode=True)
