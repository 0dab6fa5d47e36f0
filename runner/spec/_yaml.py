"""Safe, bounded YAML reading that keeps the line and column of every key and value.

Only the YAML 1.2 core types are recognised: `yes`, `no`, `on`, `off` stay strings, a number
with a leading zero (`0755`) stays a string, dates stay strings. Tags other than the core
ones are refused, duplicate keys and merge keys are refused, and size, nesting depth and
alias expansion are bounded so that a hostile file fails within a second.

The node graph is composed here from the parser's events, without recursion: PyYAML's own
composer recurses once per nesting level, so a 10,000-deep document would exhaust the stack
(or, with libyaml, the C stack) before any limit could be checked. Sizes, text lengths and
depths are counted as nodes close, with aliases counted at their expanded size, so an alias
bomb (of many values or of one long string) is refused after reading it once, without
expanding it.

Nesting is also pre-scanned before any parser sees the text: parsers spend time superlinear in
the depth of flow nesting (`[[[[...`), and libyaml from PyYAML 6.0.4 refuses it past 1,000
levels before the composer can, with its own message. Only the text up to the first collection
nested too deep is parsed, so the composer refuses it there, naming its key path, whichever
PyYAML and libyaml are installed.
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
MAX_CHARS = 1_000_000
"""Characters of scalar text (keys and values) a document may stand for, aliases expanded."""

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
    chars: int = 0
    """How many characters of scalar text it stands for, aliases expanded."""
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
            node.chars = sum(child.chars for child in node.value)
            node.depth = 1 + max((child.depth for child in node.value), default=0)
            if node.size > MAX_NODES:
                raise fail(node.line, node.col, path, f"document expands to more than "
                                                      f"{MAX_NODES} values (an alias bomb?)")
            if node.chars > MAX_CHARS:
                raise fail(node.line, node.col, path, f"document expands to more than "
                                                      f"{MAX_CHARS} characters (an alias bomb?)")
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
                     plain=event.tag is None and bool(event.implicit[0]), chars=len(event.value))
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
    cut = _too_deep_at(text)
    if cut is not None:
        _refuse_deep_prefix(text[:cut], file)
    node = _parse(text, file)
    if node is None:
        return None
    return _Builder(file, marks, scalar_hook).build(node)


def _parse(text: str, file: str) -> _Node | None:
    loader = _Loader(text)
    try:
        return _compose(loader, file)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(_clearer_error(text) or exc, file) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML error: {exc}", path=file) from None
    finally:
        loader.dispose()


def _refuse_deep_prefix(prefix: str, file: str) -> None:
    """Compose the text up to where the pre-scan found nesting too deep: the composer refuses
    it there. If the parser disagrees with the pre-scan (the cut text just ends), the whole
    text decides, which is still bounded: the composer stops at MAX_DEPTH and so does
    `_clearer_error`."""
    loader = _Loader(prefix)
    try:
        _compose(loader, file)
    except yaml.YAMLError:
        pass
    finally:
        loader.dispose()


def _clearer_error(text: str) -> yaml.MarkedYAMLError | None:
    """The pure-Python parser's account of a syntax error (it names tabs and the expected
    token, where libyaml is vague); only for ordinary-sized files, since it is ~10x slower,
    and only as deep as MAX_DEPTH: its time grows with the square of the nesting depth."""
    if _PyLoader is _Loader or len(text) > 32 * 1024:
        return None
    loader = _PyLoader(text)
    depth = 0
    try:
        while not loader.check_event(StreamEndEvent):
            event = loader.get_event()
            if isinstance(event, (SequenceStartEvent, MappingStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    return None
            elif isinstance(event, (SequenceEndEvent, MappingEndEvent)):
                depth -= 1
    except yaml.MarkedYAMLError as exc:
        return exc
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()
    return None


# ---------------------------------------------------------------------------- pre-scan

_SINGLE_END = re.compile(r"[^']*(?:''[^']*)*'")
_DOUBLE_END = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"')
_PLAIN_END = re.compile(r":(?=[ \t\r]|$)|[ \t]#")
_FLOW_PLAIN = re.compile(r"[^\[\]{},:?'\"#&! \t\r]*")
_WORD = re.compile(r"[^ \t\r,\[\]{}]*")


def _quote_end(line: str, i: int, quote: str) -> int:
    """The index just past the quote closing a scalar whose text starts at `i`, or -1."""
    m = (_SINGLE_END if quote == "'" else _DOUBLE_END).match(line, i)
    return m.end() if m else -1


def _too_deep_at(text: str) -> int | None:
    """Where the first collection nested deeper than MAX_DEPTH opens (the offset just past
    the token that opens it), or None: a linear scan that no parser version can make slow.

    It counts block collections by their indentation, as the YAML scanner does, and flow
    brackets, skipping comments, quoted scalars, block scalars and plain text. It only has to
    be close: the composer decides, on the text up to this point.
    """
    scan = _DepthScan()
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        at = scan.line(text[start:end])
        if at is not None:
            return start + at
        start = end + 1
    return None


class _DepthScan:
    """The pre-scan's state from one line to the next."""

    def __init__(self) -> None:
        self.indents: list[int] = []  # columns of the open block collections
        self.flow = 0                 # open flow collections
        self.quote = ""               # a quoted scalar running on to the next line
        self.block: int | None = None  # lines this indented (or blank) are a block scalar's
        self.block_min = 0            # a block scalar's least indentation, until known
        self.node = True              # in flow: a node may start here (a quote opens one)
        self.key = -1                 # the column of a possible block mapping key

    def line(self, line: str) -> int | None:
        """Scan one line; the index just past the token that nests too deep, if one does."""
        indent = len(line) - len(line.lstrip(" "))
        if self.block is not None:
            if not line.strip(" \t\r"):
                return None
            if self.block < 0:
                self.block = indent if indent >= self.block_min else None
            if self.block is not None and indent >= self.block:
                return None
            self.block = None
        i, self.key = 0, -1  # a block mapping key never spans lines
        if self.quote:
            i = _quote_end(line, 0, self.quote)
            if i < 0:
                return None
            self.quote, self.node = "", False
        while i < len(line):
            ch = line[i]
            if ch in " \t\r":
                i += 1
                continue
            if ch == "#" and (i == 0 or line[i - 1] in " \t"):
                return None  # a comment
            i, opened = self._flow(line, i) if self.flow else self._block(line, i)
            if i < 0:
                return None
            if opened and len(self.indents) + self.flow > MAX_DEPTH:
                return i
        return None

    def _flow(self, line: str, i: int) -> tuple[int, bool]:
        """The token at `i` inside a flow collection: (where the next one starts, or -1 to
        leave the line; whether it opened a collection)."""
        ch = line[i]
        if ch in "[{":
            self.flow += 1
            self.node = True
            return i + 1, True
        if ch in "]}":
            self.flow -= 1
            self.node = False
        elif ch in ",:?":
            self.node = True
        elif ch in "'\"" and self.node:
            return self._quoted(line, i), False
        elif ch in "&!":  # an anchor or a tag: a node still starts after it
            return _WORD.match(line, i).end(), False
        else:  # plain text (a quote inside it is text too)
            self.node = False
            return max(_FLOW_PLAIN.match(line, i).end(), i + 1), False
        return i + 1, False

    def _block(self, line: str, i: int) -> tuple[int, bool]:
        """The token at `i` outside flow collections, as `_flow`."""
        while self.indents and self.indents[-1] > i:  # a token left of a collection ends it
            self.indents.pop()
        top = self.indents[-1] if self.indents else -1
        ch = line[i]
        gap = i + 1 >= len(line) or line[i + 1] in " \t\r"
        if ch in "-?" and gap:  # a sequence entry or an explicit key
            opened = i > top
            if opened:
                self.indents.append(i)
            return i + 1, opened
        if ch == ":" and gap:  # a value: the key before it may open a mapping
            opened = top < self.key
            if opened:
                self.indents.append(self.key)
            self.key = -1
            return i + 1, opened
        if ch in "[{":
            self.key, self.flow, self.node = i, 1, True
            return i + 1, True
        if ch in "'\"":
            self.key = i
            return self._quoted(line, i), False
        if ch in "|>":  # a block scalar: the lines indented past the collection's are its text
            header = line[i + 1:].split("#", 1)[0]
            digits = [int(c) for c in header if c.isdigit()]
            least = max(top + 1, 1)
            self.block, self.block_min = (least + digits[0] - 1 if digits else -1), least
            return -1, False
        if ch in "&!":
            return _WORD.match(line, i).end(), False
        if ch == "*":
            self.key = i
            return _WORD.match(line, i).end(), False
        if i == 0 and ch == "%":  # a directive
            return -1, False
        if i == 0 and line[:3] in ("---", "...") and line[3:4] in ("", " ", "\t", "\r"):
            self.indents.clear()  # a document marker ends every block collection
            return i + 3, False
        self.key = i  # plain text, up to a `: ` that makes it a key, or a comment
        m = _PLAIN_END.search(line, i)
        return (m.start() if m is not None and m.group() == ":" else -1), False

    def _quoted(self, line: str, i: int) -> int:
        """Past the quoted scalar opening at `i`, or -1 when it runs on to the next line."""
        end = _quote_end(line, i + 1, line[i])
        if end < 0:
            self.quote = line[i]
        self.node = False
        return end


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
