"""Safe, bounded YAML reading that keeps the line and column of every key and value.

Only the YAML 1.2 core types are recognised: `yes`, `no`, `on`, `off` stay strings, a number
with a leading zero (`0755`) stays a string, dates stay strings. Tags other than the core
ones are refused, duplicate keys and merge keys are refused, and size, nesting depth and
alias expansion are bounded so that a hostile file fails within a second.

The node graph is composed here from the parser's events, without recursion: PyYAML's own
composer recurses once per nesting level, so a 10,000-deep document would exhaust the stack
(or, with libyaml, the C stack) before any limit could be checked. Sizes and depths are
counted as nodes close, with aliases counted at their expanded size, so an alias bomb is
refused after reading it once, without expanding it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Literal

import yaml
from yaml.events import (AliasEvent, MappingEndEvent, MappingStartEvent, ScalarEvent,
                         SequenceEndEvent, SequenceStartEvent, StreamEndEvent)
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from ..errors import SpecError

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

class _PyLoader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, _Resolver):
    """The pure-Python parser: events only; slower, with clearer syntax-error messages."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _Resolver.__init__(self)


try:
    from yaml._yaml import CParser  # libyaml: ~10x faster than the Python parser

    class _Loader(CParser, _Resolver):  # type: ignore[misc]
        """libyaml's parser: events only; nodes and values are built from them here."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _Resolver.__init__(self)
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = _PyLoader  # type: ignore[misc]


_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT = _TAG + "str", _TAG + "int", _TAG + "float"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null")}
_RESOLVER = _Resolver()


def resolve_scalar(value: str) -> Any:
    """Type a plain scalar the way the loader would (used after `${VAR}` substitution)."""
    return _construct(_resolve(value), value)


def _resolve(value: str) -> str:
    return _RESOLVER.resolve(ScalarNode, value, (True, False))


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


def _show_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag


# ---------------------------------------------------------------------------- composing

@dataclass(eq=False)
class _Node:
    kind: Literal["scalar", "seq", "map"]
    tag: str
    line: int
    col: int
    value: Any
    """A scalar's text; a sequence's items; a mapping's keys and values, alternating."""
    plain: bool = False
    """An untagged plain scalar: typed by the core schema (after `${VAR}` substitution)."""
    size: int = 1
    """How many values this node stands for, aliases expanded."""
    depth: int = 0
    """How deep it nests, aliases expanded."""
    closed: bool = True
    """False while a collection's items are still being read (an alias to it would loop)."""


def _compose(loader: _Loader, file: str) -> _Node | None:
    """The document's node graph, built from parser events with a stack instead of recursion."""

    def fail(line: int, col: int, path: Path, reason: str) -> SpecError:
        return SpecError(reason, path=file, line=line, col=col, key=_short_path(path) or None)

    loader.get_event()  # stream start
    if loader.check_event(StreamEndEvent):
        return None
    loader.get_event()  # document start
    anchors: dict[str, _Node] = {}
    stack: list[tuple[_Node, Path]] = []  # the open collections and their key paths
    root: _Node | None = None
    count = 0
    while True:
        event = loader.get_event()
        line, col = event.start_mark.line + 1, event.start_mark.column + 1
        if isinstance(event, (SequenceEndEvent, MappingEndEvent)):
            node, path = stack.pop()
            node.closed = True
            node.size = 1 + sum(child.size for child in node.value)
            node.depth = 1 + max((child.depth for child in node.value), default=0)
            if node.size > MAX_NODES:
                raise fail(node.line, node.col, path, f"document expands to more than "
                                                      f"{MAX_NODES} values (an alias bomb?)")
            if node.depth > MAX_DEPTH:
                raise fail(node.line, node.col, path, f"nesting deeper than {MAX_DEPTH} levels")
            if not stack:
                break
            continue
        path = _child_path(*stack[-1]) if stack else ()
        if isinstance(event, AliasEvent):
            node = anchors.get(event.anchor)  # type: ignore[arg-type]
            if node is None:
                raise fail(line, col, path, f"alias *{event.anchor} has no anchor "
                                            f"&{event.anchor} before it")
            if not node.closed:
                raise fail(line, col, path, f"alias *{event.anchor} refers to a collection "
                                            "that contains it")
        else:
            if event.anchor is not None and event.anchor in anchors:
                raise fail(line, col, path, f"duplicate anchor &{event.anchor} "
                                            f"(first at line {anchors[event.anchor].line})")
            node = _new_node(loader, event, line, col)
            if event.anchor is not None:
                anchors[event.anchor] = node
            count += 1
            if count > MAX_NODES:
                raise fail(line, col, path, f"document has more than {MAX_NODES} values")
        if stack:
            stack[-1][0].value.append(node)
        else:
            root = node
        if not node.closed:
            if len(stack) >= MAX_DEPTH:
                raise fail(line, col, path, f"nesting deeper than {MAX_DEPTH} levels")
            stack.append((node, path))
        if not stack:
            break
    loader.get_event()  # document end
    if not loader.check_event(StreamEndEvent):
        mark = loader.get_event().start_mark
        raise fail(mark.line + 1, mark.column + 1, (),
                   "a spec is one YAML document; found a second one (---)")
    return root


def _new_node(loader: _Loader, event: Any, line: int, col: int) -> _Node:
    explicit = event.tag not in (None, "!")
    if isinstance(event, ScalarEvent):
        tag = event.tag if explicit else loader.resolve(ScalarNode, event.value, event.implicit)
        return _Node("scalar", tag, line, col, event.value,
                     plain=event.tag is None and bool(event.implicit[0]))
    if isinstance(event, SequenceStartEvent):
        tag = event.tag if explicit else loader.resolve(SequenceNode, None, event.implicit)
        return _Node("seq", tag, line, col, [], closed=False)
    if isinstance(event, MappingStartEvent):
        tag = event.tag if explicit else loader.resolve(MappingNode, None, event.implicit)
        return _Node("map", tag, line, col, [], closed=False)
    raise yaml.YAMLError(f"unexpected YAML event {type(event).__name__}")  # pragma: no cover


def _child_path(parent: _Node, path: Path) -> Path:
    """The key path of the next node added to an open collection (a key names its mapping)."""
    if parent.kind == "seq":
        return path + (len(parent.value),)
    if len(parent.value) % 2 == 0:
        return path
    key = parent.value[-1]
    return path + (key.value if key.kind == "scalar" else "?",)


def _short_path(path: Path, most: int = 8) -> str:
    return format_path(path[:most]) + ("..." if len(path) > most else "")


# ---------------------------------------------------------------------------- building values

class _Builder:
    def __init__(self, file: str, marks: dict[Path, Mark],
                 scalar_hook: Callable[[str, bool, Path, Mark], Any] | None) -> None:
        self.file, self.marks, self.scalar_hook = file, marks, scalar_hook

    def mark(self, node: _Node) -> Mark:
        return Mark(self.file, node.line, node.col)

    def error(self, node: _Node, path: Path, reason: str) -> SpecError:
        return SpecError(reason, path=self.file, line=node.line, col=node.col,
                         key=format_path(path) or None)

    def build(self, node: _Node, path: Path = ()) -> Any:
        """Plain values from a node; depth and size were bounded while composing."""
        self.marks.setdefault(path, self.mark(node))
        if node.kind == "scalar":
            return self.scalar(node, path)
        if node.tag != _TAG + node.kind:
            raise self.error(node, path, f"unsupported tag {_show_tag(node.tag)!r}")
        if node.kind == "seq":
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        out: dict[str, Any] = {}
        for key_node, value_node in zip(node.value[::2], node.value[1::2]):
            if key_node.tag not in _SCALAR_TAGS | {_TAG + "seq", _TAG + "map"}:
                raise self.error(key_node, path, f"unsupported tag {_show_tag(key_node.tag)!r}")
            if key_node.kind != "scalar":
                raise self.error(key_node, path, "mapping keys must be plain strings")
            if key_node.plain and key_node.value == "<<":
                raise self.error(key_node, path, "merge keys (<<) are not supported; "
                                                 "use extends: instead")
            key = key_node.value
            if key in out:
                first = self.marks.get(path + (key,))
                where = f" (first at line {first.line})" if first else ""
                raise self.error(key_node, path + (key,), f"duplicate key {key!r}{where}")
            self.marks[path + (key,)] = self.mark(key_node)
            out[key] = self.build(value_node, path + (key,))
        return out

    def scalar(self, node: _Node, path: Path) -> Any:
        if node.tag not in _SCALAR_TAGS:
            raise self.error(node, path, f"unsupported tag {_show_tag(node.tag)!r}")
        hook = self.scalar_hook
        if node.plain:
            return hook(node.value, True, path, self.mark(node)) if hook \
                else _construct(node.tag, node.value)
        text = hook(node.value, False, path, self.mark(node)) if hook else node.value
        if node.tag == _STR:
            return text
        # An explicit tag (`!!int 12`) must fit its value: `!!bool yes` is an error, not False.
        resolved = _resolve(text)
        if resolved != node.tag and not (node.tag == _FLOAT and resolved == _INT):
            raise self.error(node, path, f"{text!r} is not a valid {_show_tag(node.tag)}")
        return _construct(node.tag, text)


def load(text: str, file: str, marks: dict[Path, Mark],
         scalar_hook: Callable[[str, bool, Path, Mark], Any] | None = None) -> Any:
    """Parse one YAML document into plain values, recording a Mark for every path.

    `scalar_hook(text, plain, path, mark)` may rewrite each scalar (`${VAR}` substitution): for
    a plain scalar it returns the typed value, otherwise the new text.
    """
    if len(text) > MAX_BYTES:
        raise SpecError(f"file is larger than {MAX_BYTES} bytes", path=file)
    loader = _Loader(text)
    try:
        node = _compose(loader, file)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(_clearer_error(text) or exc, file) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML error: {exc}", path=file) from None
    finally:
        loader.dispose()
    if node is None:
        return None
    return _Builder(file, marks, scalar_hook).build(node)


def _clearer_error(text: str) -> yaml.MarkedYAMLError | None:
    """The pure-Python parser's account of a syntax error (it names tabs and the expected
    token, where libyaml is vague); only for ordinary-sized files, since it is ~10x slower."""
    if _PyLoader is _Loader or len(text) > 32 * 1024:
        return None
    loader = _PyLoader(text)
    try:
        while not loader.check_event(StreamEndEvent):
            loader.get_event()
    except yaml.MarkedYAMLError as exc:
        return exc
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()
    return None


def _syntax_error(exc: yaml.MarkedYAMLError, file: str) -> SpecError:
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
    return SpecError(f"YAML syntax error: {reason}", path=file,
                     line=m.line + 1 if m else None, col=m.column + 1 if m else None)


def format_path(path: Path) -> str:
    """('tools', 2, 'search') -> 'tools[2].search'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
