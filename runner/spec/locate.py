"""Where a spec came from, and turning problems into `path:line:col: key: reason` errors:
the source of a loaded spec, the project root, and pydantic's errors at their YAML marks."""

from __future__ import annotations

import os
import re
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from inspect import isclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from ..errors import SpecError, did_you_mean
from ..redact import redact_text
from ._yaml import Mark, format_path

__all__ = ["SpecSource", "find_root", "confined", "shown_path", "pydantic_errors",
           "redact_errors", "ROOT_MARKERS"]

ROOT_MARKERS = ("pyproject.toml", ".git", ".runner")


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
    bases: list[Path] = field(default_factory=list)
    """The specs it extends, the nearest first."""
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
        """A path from the spec, relative to its file (`~` expanded) and confined to the
        project root, symlinks followed; SpecError at `key` otherwise."""
        try:
            return confined(self.root, self.path.parent, os.path.expanduser(rel))
        except ValueError as exc:
            through = " (through a symlink)" if "through a symlink" in str(exc) else ""
            raise self.error(key, f"path {rel!r} escapes the project root "
                                  f"{self.root}{through}") from None



def find_root(spec_path: Path) -> Path:
    """The project root: $RUNNER_ROOT, else the nearest folder with pyproject.toml, .git or .runner."""
    env_root = os.environ.get("RUNNER_ROOT")
    if env_root:
        return Path(env_root).resolve()
    for d in [spec_path.parent, *spec_path.parent.parents]:
        if any((d / m).exists() for m in ROOT_MARKERS):
            return d
    return spec_path.parent



def confined(root: Path, base: Path, rel: str | os.PathLike[str]) -> Path:
    """`rel` taken relative to the folder `base` (an absolute `rel` stands alone) and
    resolved, symlinks followed; ValueError saying where it leads when that is outside `root`.

    No `~` expansion: callers whose paths allow it expand first. Resolving is what catches a
    symlink inside the root that points out of it; `..` is judged after symlinks, as the OS
    would.
    """
    root = Path(root).resolve()
    p = (Path(base) / rel).resolve()
    if p.is_relative_to(root):
        return p
    # only for the message: whether it looked inside before symlinks were followed
    through = (" (through a symlink)"
               if Path(os.path.normpath(Path(base) / rel)).is_relative_to(root) else "")
    raise ValueError(f"path {os.fspath(rel)!r} leads to {p}, outside the project root "
                     f"{root}{through}")


def shown_path(path: str | os.PathLike[str]) -> str:
    """A path as messages show it: relative to the current directory when inside it."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd()))
    except ValueError:
        return str(resolved)


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


def pydantic_errors(exc: ValidationError, src: SpecSource, model: type[BaseModel],
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


def redact_errors(exc: SpecError, secrets: set[str]) -> None:
    """Mask secret values in error reasons (an unknown tool named by `${SOME_TOKEN}`, say)."""
    if not secrets:
        return
    for e in getattr(exc, "errors", [exc]):
        e.reason = redact_text(e.reason, secrets)
        e.args = (e.render(),)
    exc.reason = redact_text(exc.reason, secrets)
    exc.args = (exc.render(),)

