"""Turning a model reply into actions or a final answer, and a final answer into the
structured value `output.schema` asks for.

Text ReAct dialects accepted (labels in any case, with markdown bold, inside code fences,
with CRLF line ends or a fullwidth colon), as the ReAct parsers of LangChain, CrewAI and
LlamaIndex accept them:

    Action: tool[input]            Action: Finish[answer]
    Action: tool                   Action Input: input (text or JSON)
    ACTION: tool                   ACTION_INPUT: {"json": "object"}
    Action: tool({"a": 1})         Action: tool (what it does)   + Action Input: ...
    {"action": "tool", "action_input": {...}}   (a JSON blob, fenced or bare)
    {"action": "Final Answer", "action_input": "answer"}
    Final Answer: answer           FINAL_ANSWER: answer           Answer: answer

Rules: anything from a line starting `Observation:` on is cut, even on the first line (the
model must not invent tool results); a `Question:` line ends the reply unless it comes first
(a model may restate the question); a last line that is a stop sequence cut short (`Obs`,
`Observ`) is dropped; with several actions the first runs and the model is told; with an
action and a final answer in one reply the action runs and the answer is ignored, with a
warning; a reply cut off at max_tokens runs nothing; `tool[input]` followed by more text on
later lines is the action on its first line. Markdown markers are stripped only where they
are balanced (`**Action:**`, `**Action: x**`); an input keeps its own `*`, `_` and quotes,
losing only quotes or backticks that wrap all of it (or one unbalanced leading `"`).

Arguments (native calls, JSON blobs) are JSON, or unambiguous near-JSON (single quotes,
Python's True/False/None, trailing commas) read by a literal parser that never evaluates;
nested deeper than MAX_DEPTH they are refused before decoding, and the model is told. Native
calls whose arguments are neither keep them as `RawArguments`, which the tool layer reports
instead of running.
"""

from __future__ import annotations

import ast
import io
import json
import math
import re
import tokenize
import warnings
from dataclasses import dataclass, field
from typing import Any

from .errors import OutputError, ToolError

__all__ = ["Action", "Finish", "Parsed", "RawArguments", "parse_text", "parse_tool_calls",
           "parse_structured", "final_answer", "partial_answer", "decode_arguments",
           "FORMAT_HINT", "MAX_DEPTH"]

FORMAT_HINT = ("Reply with a Thought line, then either `Action: tool_name[input]` to use a tool "
               "or `Final Answer: your answer` when you know the answer.")

MAX_DEPTH = 64
"""How deep arguments may nest (objects and arrays). Deeper is refused before decoding: a
decoder, printer or validator recursing into it would hit Python's recursion limit."""

TOO_DEEP = (f"the arguments are nested more than {MAX_DEPTH} levels deep, so nothing was run. "
            f"Send the arguments flat, as the tool's schema describes.")

_NEAR_JSON_CHARS = 100_000
"""The literal parser's input bound; longer arguments must be JSON."""

_LABEL = re.compile(
    r"^(?P<pre>[ \t>*_#-]*)(?P<label>thought|action[ _]input|action|final[ _]answer|answer"
    r"|observation|question)(?P<mid>[ \t*_]*):(?P<rest>.*)$", re.I)
_CALL = re.compile(r"^([A-Za-z_][\w.-]*)\s*\[(.*)\]\s*$", re.S)
_TRAILING_GROUPS = re.compile(r"(?:\s*\[[^\[\]]*\])+\s*")
_NAMED = re.compile(r"^([A-Za-z_][\w.-]*)(\s*)\((.*)\)$", re.DOTALL)
"""`tool(arguments)`, or `tool (what it does)` before an Action Input."""
_FENCE = re.compile(r"^\s*```[\w-]*\s*$")
_BLOB = re.compile(r"""\{\s*["']action(?:_input)?["']\s*:""")
_BACKTICKED = re.compile(r"(`+)([^`]+)\1")
_STOPS = ("observation:", "question:")
_FINISH = ("finish", "final_answer", "final answer")
_SIGNIFICANT = re.compile(r"""["'\[\]{}]""")
_STRING_REST = {q: re.compile(rf"[^{q}\\]*(?:\\.[^{q}\\]*)*{q}", re.DOTALL) for q in "\"'"}
"""The rest of a string after its opening quote, escapes included."""
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d"}


@dataclass
class Action:
    """Run `tool` with `input` (text, or arguments already decoded from a native call)."""

    tool: str
    input: str | dict[str, Any]
    call_id: str | None = None


class RawArguments(str):
    """A native call's arguments that are not valid JSON, kept as sent so the tool layer can
    report the JSON error instead of passing the text on as an argument."""


@dataclass
class Finish:
    answer: str


@dataclass
class Parsed:
    """What a reply asked for: actions, a final answer, or neither (`failure` says why)."""

    thought: str = ""
    actions: list[Action] = field(default_factory=list)
    finish: Finish | None = None
    failure: str | None = None
    warnings: list[str] = field(default_factory=list)
    raw: str = ""
    """The reply as kept for the transcript (cut before any invented Observation)."""


# ---------------------------------------------------------------- arguments

def _scan(text: str, start: int = 0, whole: bool = False) -> tuple[int, int]:
    """Brackets outside strings from `start`: (the index just past the one closing the first
    bracket, or -1 when `whole` or unclosed; the deepest nesting seen). Stops early once
    deeper than MAX_DEPTH, so a hostile text costs one pass at most."""
    depth = deepest = 0
    i = start
    while (m := _SIGNIFICANT.search(text, i)) is not None:
        c, i = m.group(), m.end()
        if c in _STRING_REST:  # jump to the end of the string in one match
            rest = _STRING_REST[c].match(text, i)
            if rest is None:  # never closed: nothing after it is structure
                return -1, deepest
            i = rest.end()
        elif c in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    return -1, deepest
        elif c in "]}":
            depth = max(0, depth - 1)
            if depth == 0 and not whole:
                return i, deepest
    return -1, deepest


_JSON_NAMES = {"true": True, "false": False, "null": None}


def _literal(node: ast.AST, depth: int = 0) -> Any:
    """A JSON value from a Python literal's syntax tree; ValueError for anything else (a
    call, an operator, a name, bytes, a tuple...). Nothing is evaluated."""
    if depth > MAX_DEPTH:
        raise ValueError("nested too deep")
    if isinstance(node, ast.Constant):
        v = node.value
        if v is None or isinstance(v, (str, int)) or (isinstance(v, float) and math.isfinite(v)):
            return v
    elif isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    elif (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
          and isinstance(node.operand, ast.Constant)
          and type(node.operand.value) in (int, float)):
        v = _literal(node.operand, depth)
        return -v if isinstance(node.op, ast.USub) else v
    elif isinstance(node, ast.List):
        return [_literal(e, depth + 1) for e in node.elts]
    elif isinstance(node, ast.Dict):
        out: dict[str, Any] = {}
        for k, v in zip(node.keys, node.values):
            if not (isinstance(k, ast.Constant) and isinstance(k.value, str)):
                raise TypeError("keys must be strings")
            out[k.value] = _literal(v, depth + 1)
        return out
    raise ValueError(f"not a JSON value: {type(node).__name__}")


def _near_json(text: str) -> Any:
    """`text` as an object or array in near-JSON (single quotes, Python literals, trailing
    commas), or None. Parsed by `ast.parse`, which only builds a tree; `_literal` accepts
    plain values from it and nothing that could run."""
    if len(text) > _NEAR_JSON_CHARS:
        return None
    try:
        with warnings.catch_warnings():  # "invalid escape sequence" is the model's, not ours
            warnings.simplefilter("ignore")
            if _adjacent_strings(text):
                return None
            tree = ast.parse(text.strip(), mode="eval")
        value = _literal(tree.body)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError,
            tokenize.TokenError):
        return None
    return value if isinstance(value, (dict, list)) else None


_LAYOUT = (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT)


def _adjacent_strings(text: str) -> bool:
    """Whether two string literals touch (`["a" "b"]`): Python joins them, but it is what a
    missed comma looks like, so the reading is ambiguous."""
    previous = None
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in _LAYOUT:
            continue
        if tok.type == tokenize.STRING and previous == tokenize.STRING:
            return True
        previous = tok.type
    return False


def _decode(text: str) -> Any:
    """JSON, else near-JSON (the nesting already checked); json.JSONDecodeError for neither."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:
            value = _near_json(text)
        except ValueError:  # a literal past CPython's int digit limit
            value = None
        if value is None:
            raise
        return value
    except ValueError as exc:  # an integer past CPython's 4,300-digit limit
        raise json.JSONDecodeError(f"a number too long to read ({exc})", text, 0) from None


def decode_arguments(text: str) -> Any:
    """A call's arguments as JSON or unambiguous near-JSON, never evaluated: ToolError when
    nested deeper than MAX_DEPTH, json.JSONDecodeError when neither JSON nor near-JSON."""
    if _scan(text, whole=True)[1] > MAX_DEPTH:
        raise ToolError(TOO_DEEP)
    return _decode(text)


# ---------------------------------------------------------------- text ReAct

def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\uff1a", ":")
    text = "\n".join(line for line in text.split("\n") if not _FENCE.match(line)).strip()
    # a stop sequence the server cut half-way (`\nObs`, `\nObserv`): no part of the reply
    head, newline, last = text.rpartition("\n")
    word = last.strip(" \t>*_#-").lower()
    if newline and len(word) >= 2 and any(stop.startswith(word) for stop in _STOPS):
        return head.rstrip()
    return text


def _body(m: re.Match[str]) -> str:
    """A label's text on its line, without markdown markers that close ones opened before the
    label (`**Action:** x`, `**Action: x**`); the input's own `*` and `_` stay."""
    opened = re.search(r"[*_]*$", m["pre"]).group()  # type: ignore[union-attr]
    rest = m["rest"]
    if opened and not m["mid"].strip(" \t"):  # not closed before the colon
        lead = rest.lstrip(" \t")
        if lead.startswith(opened):
            rest = lead[len(opened):]
        elif rest.rstrip().endswith(opened):
            rest = rest.rstrip()[:-len(opened)]
    return rest.strip()


def _sections(text: str) -> tuple[list[tuple[str, str]], str, bool]:
    """Split into (label, body) pairs; stop at an Observation or a new Question."""
    sections: list[tuple[str, str]] = [("thought", "")]
    kept: list[str] = []
    cut = False
    for line in text.split("\n"):
        m = _LABEL.match(line)
        # `Answer:` inside a final answer or an input is its text (`Q: ...` / `Answer: ...`)
        if m and m["label"].lower() == "answer" and sections[-1][0] in ("final_answer",
                                                                         "action_input"):
            m = None
        if m:
            label = m["label"].lower().replace(" ", "_")
            if label == "observation" or (label == "question" and (len(sections) > 1
                                                                   or sections[0][1])):
                cut = True
                break
            sections.append(("final_answer" if label == "answer" else label, _body(m)))
        else:
            label, body = sections[-1]
            sections[-1] = (label, f"{body}\n{line}" if body else line.strip())
        kept.append(line)
    return [(lab, body.strip()) for lab, body in sections], "\n".join(kept).strip(), cut


def _unquote(text: str) -> str:
    """An input without quotes or backticks wrapping all of it, or one unbalanced leading `"`
    (a leading `'` may be an apostrophe, and a trailing quote is the input's own)."""
    if len(text) < 2:
        return text
    if m := _BACKTICKED.fullmatch(text):
        return m[2].strip()
    close = _QUOTES.get(text[0])
    inner = text[1:-1]
    if close and text[-1] == close and text[0] not in inner and close not in inner:
        return inner
    if text[0] == '"' and '"' not in text[1:]:
        return text[1:]
    return text


def _clean_input(text: str, tool: str) -> str:
    """An input as the model meant it: out of a `tool(...)` wrapper and wrapping quotes."""
    text = text.strip()
    m = _NAMED.match(text)
    if m and m[1] == tool and not m[2]:
        text = m[3].strip()
    return _unquote(text)


def _first_group(inner: str) -> str:
    """The input of `tool[input][more]`: a small model may write a bracketed group after
    the input (`search[a question][search]`); what follows the input's own closing bracket
    is dropped when it is nothing but such groups. Brackets inside the input stay."""
    depth = 0
    for i, char in enumerate(inner):
        if char == "[":
            depth += 1
        elif char == "]":
            if depth == 0:
                return inner[:i] if _TRAILING_GROUPS.fullmatch(inner[i + 1:] + "]") else inner
            depth -= 1
    return inner


def _name_and_input(body: str, given: str | None) -> tuple[str, str | None]:
    """An Action line's tool and input (`given`: the Action Input after it, if any)."""
    first = body.split("\n", 1)[0]
    m = _CALL.match(body) or _CALL.match(first)
    if m:
        return m[1], _clean_input(_first_group(m[2]), m[1])
    head = first.strip().strip("`'\"*").strip()
    m = _NAMED.match(body) or _NAMED.match(head)
    if m:
        name, space, inner = m.groups()
        if given is not None:  # `tool (what it does)` then the input
            return name, _clean_input(given, name)
        if not space or inner.lstrip()[:1] in ("{", "["):  # `tool(arguments)`
            return name, _clean_input(inner, name)
        return name, None
    return head, None if given is None else _clean_input(given, head)


def _blobs(text: str) -> tuple[list[dict[str, Any]], str, bool]:
    """The JSON blob actions in `text` (`{"action": ..., "action_input": ...}`), the text
    without them, and whether one was nested too deep (nothing is decoded then)."""
    found: list[dict[str, Any]] = []
    spans: list[tuple[int, int]] = []
    pos = tries = 0
    while tries < 16 and (m := _BLOB.search(text, pos)) is not None:
        tries += 1
        end, deepest = _scan(text, m.start())
        if deepest > MAX_DEPTH:
            return [], text, True
        pos = m.end()
        if end < 0:
            continue
        try:
            value = _decode(text[m.start():end])
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and isinstance(value.get("action"), str):
            found.append(value)
            spans.append((m.start(), end))
            pos = end
    for start, end in reversed(spans):
        text = text[:start] + text[end:]
    return found, text.strip(), False


def _blob_step(blob: dict[str, Any]) -> tuple[str, Any, bool]:
    """A JSON blob as (tool, input, whether it is the final answer)."""
    name, arg = blob["action"].strip(), blob.get("action_input")
    if name.lower() in _FINISH:
        return name, arg if isinstance(arg, str) else json.dumps(arg, ensure_ascii=False), True
    if arg is None:
        arg = {}
    elif not isinstance(arg, (str, dict)):
        arg = json.dumps(arg, ensure_ascii=False)
    return name, arg, False


def parse_text(text: str, finish_reason: str | None = None) -> Parsed:
    """Parse a text ReAct reply."""
    sections, raw, cut = _sections(_normalise(text))
    if raw and not _LABEL.match(raw.split("\n", 1)[0]):
        raw = "Thought: " + raw
    parsed = Parsed(raw=raw)
    if cut:
        parsed.warnings.append("the reply contained its own Observation; it was ignored")
    thoughts: list[str] = []
    steps: list[tuple[str, Any, bool]] = []  # (tool, input, final) in the reply's order
    for i, (label, body) in enumerate(sections):
        blobs: list[dict[str, Any]] = []
        if label == "thought" or (label == "action" and body.startswith("{")):
            blobs, rest, too_deep = _blobs(body)
            if too_deep:
                parsed.failure = TOO_DEEP
                return parsed
            if label == "thought" and rest:
                thoughts.append(rest)
            steps.extend(_blob_step(b) for b in blobs)
        if label == "final_answer":
            steps.append(("", body, True))
        if label != "action" or blobs:
            continue
        nxt = sections[i + 1] if i + 1 < len(sections) else None
        name, arg = _name_and_input(body, nxt[1] if nxt and nxt[0] == "action_input" else None)
        if not name:
            continue
        if name.lower() in _FINISH:
            steps.append((name, arg or "", True))
        elif arg is None:
            parsed.failure = (f"`Action: {name}` has no input. Write `Action: {name}[input]`, or "
                              f"`Action Input:` on the next line.")
        else:
            steps.append((name, arg, False))
    parsed.thought = "\n".join(thoughts).strip()
    if finish_reason == "length":
        parsed.failure = ("your reply was cut off at the token limit before it was complete, so "
                          "nothing was run. Write a shorter thought and one complete action.")
        return parsed
    if parsed.failure is not None:
        return parsed
    finals = [arg for _, arg, final in steps if final]
    parsed.actions = [Action(name, arg) for name, arg, final in steps if not final and name]
    if len(parsed.actions) > 1:
        parsed.warnings.append(f"the reply had {len(parsed.actions)} actions; only the first "
                               f"({parsed.actions[0].tool}) ran. Send one action at a time.")
        del parsed.actions[1:]
    if parsed.actions and finals:
        parsed.warnings.append("the reply had both an action and a final answer; the action ran "
                               "and the answer was ignored. Give the final answer after the "
                               "observation.")
    elif finals:
        parsed.finish = Finish(finals[0])
    if not parsed.actions and parsed.finish is None:
        parsed.failure = "no Action or Final Answer found. " + FORMAT_HINT
    return parsed


# ---------------------------------------------------------------- native tool calls

def parse_tool_calls(text: str, tool_calls: list[Any], finish_reason: str | None) -> Parsed:
    """A native tool-calling reply: every call becomes an action (they run concurrently), in
    the calls' order. Arguments nested too deep run nothing: the reply is a failure."""
    parsed = Parsed(thought=(text or "").strip(), raw=text or "")
    if finish_reason == "length" and tool_calls:
        parsed.failure = ("your reply was cut off at the token limit, so no tool was run. "
                          "Call fewer tools or use shorter arguments.")
        return parsed
    for n, call in enumerate(tool_calls, 1):
        arguments = call.arguments or "{}"
        if _scan(arguments, whole=True)[1] > MAX_DEPTH:
            parsed.actions = []
            parsed.failure = (f"the arguments of call {n} ({call.name}) are nested more than "
                              f"{MAX_DEPTH} levels deep, so no tool was run. Send the "
                              f"arguments flat, as the tool's schema describes.")
            return parsed
        try:
            args = _decode(arguments)
        except json.JSONDecodeError:
            args = RawArguments(call.arguments)
        parsed.actions.append(Action(call.name, args, call.id))
    if not tool_calls:
        parsed.finish = Finish(parsed.thought)
        parsed.thought = ""
    return parsed


def partial_answer(reply: Any, native: bool) -> str | None:
    """The answer in a reply that came too late to count (it crossed a budget), if any."""
    if native and not reply.tool_calls:
        return str(reply.text).strip()
    final = parse_text(reply.text, reply.finish_reason).finish
    return final.answer.strip() if final else None


# ---------------------------------------------------------------- structured answers

def final_answer(text: str, output: Any) -> Any:
    """The answer as given, or parsed and checked against `output.schema` when there is one."""
    return text.strip() if output is None else parse_structured(text, output.json_schema)


_FENCED = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def parse_structured(text: str, schema: dict[str, Any]) -> Any:
    """The JSON value in `text` (bare or in a code fence), valid against `schema`."""
    import jsonschema

    m = _FENCED.search(text)
    body = (m.group(1) if m else text).strip()
    if not m:
        start = min((i for i in (body.find("{"), body.find("[")) if i >= 0), default=-1)
        if start > 0:
            body = body[start:]
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise OutputError(f"the answer is not valid JSON ({exc.msg} at line {exc.lineno} column "
                          f"{exc.colno}); answer with a JSON value matching the output schema"
                          ) from None
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value),
                    key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(map(str, e.absolute_path)) or "(root)"
        raise OutputError(f"the answer does not fit the output schema at {where}: {e.message}")
    return value
