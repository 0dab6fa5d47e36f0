"""Turning a model reply into actions or a final answer, and a final answer into the
structured value `output.schema` asks for.

Text ReAct dialects accepted (labels in any case, with markdown bold, inside code fences,
with CRLF line ends or a fullwidth colon):

    Action: tool[input]            Action: Finish[answer]
    Action: tool                   Action Input: input (text or JSON)
    ACTION: tool                   ACTION_INPUT: {"json": "object"}
    Final Answer: answer           FINAL_ANSWER: answer

Rules: anything from a line starting `Observation:` on is cut, even on the first line (the
model must not invent tool results); a `Question:` line ends the reply unless it comes first
(a model may restate the question); with several actions the first runs and the model is
told; with an action and a final answer in one reply the action runs and the answer is
ignored, with a warning; a reply cut off at max_tokens runs nothing; `tool[input]` followed by
more text on later lines is the action on its first line. Native calls whose arguments are not
valid JSON keep them as `RawArguments`, which the tool layer reports instead of running.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import OutputError

__all__ = ["Action", "Finish", "Parsed", "RawArguments", "parse_text", "parse_tool_calls",
           "parse_structured", "final_answer", "partial_answer", "FORMAT_HINT"]

FORMAT_HINT = ("Reply with a Thought line, then either `Action: tool_name[input]` to use a tool "
               "or `Final Answer: your answer` when you know the answer.")

_LABEL = re.compile(
    r"^[ \t>*_#-]*(thought|action[ _]input|action|final[ _]answer|observation|question)"
    r"[ \t*_]*:[ \t*_]*(.*)$", re.I)
_CALL = re.compile(r"^([A-Za-z_][\w.-]*)\s*\[(.*)\]\s*$", re.S)
_FENCE = re.compile(r"^\s*```[\w-]*\s*$")


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


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\uff1a", ":")
    return "\n".join(line for line in text.split("\n") if not _FENCE.match(line)).strip()


def _sections(text: str) -> tuple[list[tuple[str, str]], str, bool]:
    """Split into (label, body) pairs; stop at an Observation or a new Question."""
    sections: list[tuple[str, str]] = [("thought", "")]
    kept: list[str] = []
    cut = False
    for line in text.split("\n"):
        m = _LABEL.match(line)
        if m:
            label = m.group(1).lower().replace(" ", "_")
            if label == "observation" or (label == "question" and (len(sections) > 1
                                                                   or sections[0][1])):
                cut = True
                break
            sections.append((label, m.group(2).strip().rstrip("*_").strip()))
        else:
            label, body = sections[-1]
            sections[-1] = (label, f"{body}\n{line}" if body else line.strip())
        kept.append(line)
    return [(lab, body.strip()) for lab, body in sections], "\n".join(kept).strip(), cut


def parse_text(text: str, finish_reason: str | None = None) -> Parsed:
    """Parse a text ReAct reply."""
    sections, raw, cut = _sections(_normalise(text))
    if raw and not _LABEL.match(raw.split("\n", 1)[0]):
        raw = "Thought: " + raw
    parsed = Parsed(raw=raw)
    parsed.thought = "\n".join(b for lab, b in sections if lab == "thought" and b).strip()
    if cut:
        parsed.warnings.append("the reply contained its own Observation; it was ignored")
    if finish_reason == "length":
        parsed.failure = ("your reply was cut off at the token limit before it was complete, so "
                          "nothing was run. Write a shorter thought and one complete action.")
        return parsed
    finals = [b for lab, b in sections if lab == "final_answer"]
    for i, (label, body) in enumerate(sections):
        if label != "action":
            continue
        # `tool[input]` followed by chatter on later lines: the first line is the action.
        m = _CALL.match(body) or _CALL.match(body.split("\n", 1)[0])
        if m:
            name, arg = m.group(1), m.group(2).strip()
        else:
            name, arg = body.strip().strip("`'\""), None
            nxt = sections[i + 1] if i + 1 < len(sections) else None
            if nxt and nxt[0] == "action_input":
                arg = nxt[1]
        if not name:
            continue
        if name.lower() in ("finish", "final_answer", "final answer"):
            finals.insert(0, arg or "")
            continue
        if arg is None:
            parsed.failure = (f"`Action: {name}` has no input. Write `Action: {name}[input]`, or "
                              f"`Action Input:` on the next line.")
            return parsed
        parsed.actions.append(Action(name, arg))
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


def parse_tool_calls(text: str, tool_calls: list[Any], finish_reason: str | None) -> Parsed:
    """A native tool-calling reply: every call becomes an action (they run concurrently)."""
    parsed = Parsed(thought=(text or "").strip(), raw=text or "")
    if finish_reason == "length" and tool_calls:
        parsed.failure = ("your reply was cut off at the token limit, so no tool was run. "
                          "Call fewer tools or use shorter arguments.")
        return parsed
    for call in tool_calls:
        try:
            args = json.loads(call.arguments or "{}")
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
