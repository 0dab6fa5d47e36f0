"""Safe, bounded YAML reading that keeps the line and column of every key and value.

Only the YAML 1.2 core types are recognised: `yes`, `no`, `on`, `off` stay strings, a number
with a leading zero (`0755`) stays a string, dates stay strings. Tags other than the core
ones are refused, duplicate keys are refused, and size, nesting depth and alias expansion
are bounded so that a hostile file fails within a second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import SpecError

MAX_BYTES = 256 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000

Path = tuple[Any, ...]


@dataclass(frozen=True)
class Mark:
    """Where a value came from: file, 1-based line and column."""

    file: str
    line: int
    col: int


class _Resolver(yaml.resolver.BaseResolver):
    """YAML 1.2 core schema resolution (no YAML 1.1 booleans, octals or timestamps)."""


_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"))
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:(?:0|[1-9][0-9]*)\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?(?:0|[1-9][0-9]*)[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])

if hasattr(yaml, "CParser"):
    class _Loader(yaml.CParser, _Resolver):  # type: ignore[name-defined,misc]
        """libyaml's composer: nodes only; values are built from them here, never constructed."""

        def __init__(self, stream: str) -> None:
            yaml.CParser.__init__(self, stream)
            _Resolver.__init__(self)
else:  # pragma: no cover - pure-Python PyYAML
    class _Loader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser,  # type: ignore[no-redef]
                  yaml.composer.Composer, _Resolver):
        """A composer only: values are built from nodes here, never with a constructor."""

        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            _Resolver.__init__(self)


_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null")}


def resolve_scalar(value: str) -> Any:
    """Type a plain scalar the way the loader would (used after `${VAR}` substitution)."""
    tag = _Resolver().resolve(ScalarNode, value, (True, False))
    return _construct(tag, value)


def _construct(tag: str, value: str) -> Any:
    kind = tag[len(_TAG):]
    if kind == "bool":
        return value.lower() == "true"
    if kind == "int":
        return int(value, 0)
    if kind == "float":
        low = value.lower()
        if low.endswith("inf"):
            return float("-inf") if low.startswith("-") else float("inf")
        return float("nan") if low.endswith("nan") else float(value)
    if kind == "null":
        return None
    return value


class _Builder:
    def __init__(self, file: str, marks: dict[Path, Mark],
                 scalar_hook: Callable[[str, bool, Path, Mark], Any] | None) -> None:
        self.file, self.marks, self.scalar_hook, self.count = file, marks, scalar_hook, 0

    def mark(self, node: Node) -> Mark:
        return Mark(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def error(self, node: Node, path: Path, reason: str) -> SpecError:
        m = self.mark(node)
        return SpecError(reason, path=m.file, line=m.line, col=m.col, key=format_path(path))

    def build(self, node: Node, path: Path = (), depth: int = 0) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.error(node, path, f"document expands to more than {MAX_NODES} values "
                                         "(an alias bomb?)")
        if depth > MAX_DEPTH:
            raise self.error(node, path, f"nesting deeper than {MAX_DEPTH} levels")
        self.marks.setdefault(path, self.mark(node))
        if isinstance(node, ScalarNode):
            if node.tag not in _SCALAR_TAGS:
                raise self.error(node, path, f"unsupported tag {node.tag!r}")
            if self.scalar_hook is not None:
                return self.scalar_hook(node.value, node.style is None, path, self.mark(node))
            return _construct(node.tag, node.value)
        if isinstance(node, SequenceNode):
            if node.tag != _TAG + "seq":
                raise self.error(node, path, f"unsupported tag {node.tag!r}")
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            if node.tag != _TAG + "map":
                raise self.error(node, path, f"unsupported tag {node.tag!r}")
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _TAG + "merge":
                    raise self.error(key_node, path, "merge keys (<<) are not supported; "
                                                     "use extends: instead")
                if not isinstance(key_node, ScalarNode) or key_node.tag not in _SCALAR_TAGS:
                    raise self.error(key_node, path, "mapping keys must be plain strings")
                key = key_node.value
                if key in out:
                    first = self.marks.get(path + (key,))
                    where = f" (first at line {first.line})" if first else ""
                    raise self.error(key_node, path + (key,), f"duplicate key {key!r}{where}")
                self.marks[path + (key,)] = self.mark(key_node)
                out[key] = self.build(value_node, path + (key,), depth + 1)
            return out
        raise self.error(node, path, "unsupported YAML node")  # pragma: no cover


def load(text: str, file: str, marks: dict[Path, Mark],
         scalar_hook: Callable[[str, bool, Path, Mark], Any] | None = None) -> Any:
    """Parse one YAML document into plain values, recording a Mark for every path."""
    if len(text) > MAX_BYTES:
        raise SpecError(f"file is larger than {MAX_BYTES} bytes", path=file)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        m = exc.problem_mark or exc.context_mark
        reason = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            started = ""
            if exc.context_mark is not None and exc.context_mark is not m:
                started = (f" started at line {exc.context_mark.line + 1}, "
                           f"column {exc.context_mark.column + 1}")
            reason = f"{exc.problem} ({exc.context}{started})"
        if "\t" in reason or "'\\t'" in reason:
            reason += "; indent with spaces, not tabs"
        raise SpecError(f"YAML syntax error: {reason}", path=file,
                        line=m.line + 1 if m else None, col=m.column + 1 if m else None) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML error: {exc}", path=file) from None
    except RecursionError:
        raise SpecError(f"nesting deeper than {MAX_DEPTH} levels", path=file) from None
    finally:
        loader.dispose()
    if node is None:
        return None
    return _Builder(file, marks, scalar_hook).build(node)


def format_path(path: Path) -> str:
    """('tools', 2, 'search') -> 'tools[2].search'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
