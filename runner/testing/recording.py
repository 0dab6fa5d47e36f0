"""Record and replay of model exchanges (`runner run --record FILE` / `--replay FILE`).

A recording is JSON lines, written and flushed as the run goes (a crashed run keeps what it
had), every request and reply redacted first, so no secret is ever stored:

    {"kind": "recording", "version": 1, "created": "2025-01-31T12:00:00+00:00"}
    {"kind": "agent", "agent": "calculator", "model": "local/gemma-3-270m", "supports_tools": false,
     "settings": {"id": "local/gemma-3-270m", "temperature": 0.0, "max_tokens": 96}}
    {"kind": "exchange", "agent": "calculator",
     "request": {"messages": [...], "tools": [...] | null, "stop": [...] | null},
     "reply": {"text": "...", "tool_calls": [{"id", "name", "arguments"}], "finish_reason": "stop",
               "usage": {"prompt_tokens": 579, "completion_tokens": 20}, "cost_usd": null,
               "model": "local/gemma-3-270m"}}

An `agent` line comes once per agent name, when its models are first built; only successful
exchanges are kept (a failed attempt that the retry layer repeated is not). A replay whose
spec asks for another model, temperature or max_tokens than the recording's fails at its first
call: the recorded replies were another model's.

Replay never builds a model (no weights loaded, no key, no network). A request is answered by
content: agent name plus the canonical JSON of the redacted request. So one file can hold
many runs (all the cases of a test file), and parallel sub-agents may interleave freely;
identical requests get their recorded replies in order, the last one again once they run out.
A request the recording does not hold raises ReplayMismatch, saying where it differs from the
closest recorded request of that agent.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from .._files import TooLarge, read_bounded
from ..errors import RecordingError, ReplayMismatch
from ..models import Completion, Message, Model, ToolCall, Usage
from ..redact import Redactor
from ..result import to_json
from ..spec import ModelSpec, shown_path

__all__ = ["Recorder", "Replayer", "VERSION"]

VERSION = 1
MAX_RECORDING_BYTES = 256 * 1024 * 1024
"""A recording is read whole; past this it is refused rather than read (`--replay /dev/zero`)."""


def _canonical(request: dict[str, Any]) -> str:
    return json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      default=str)


def _request(messages: list[Message], tools: list[dict[str, Any]] | None,
             stop: list[str] | None, redactor: Redactor) -> dict[str, Any]:
    """The request as it is stored and matched: redacted, JSON-ready."""
    return redactor.value({"messages": messages, "tools": tools or None, "stop": stop or None})



# --------------------------------------------------------------------------- recording

class Recorder:
    """A ModelTap that calls the spec's models and writes every successful exchange to `path`
    (created or emptied now)."""

    def __init__(self, path: str | os.PathLike[str], redactor: Redactor) -> None:
        self.path, self.redactor = Path(path), redactor
        self._agents: set[str] = set()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[str] | None = self.path.open("w", encoding="utf-8")
        except OSError as exc:
            raise RecordingError(f"cannot write the recording: {exc.strerror}",
                                 path=shown_path(path)) from None
        self._write({"kind": "recording", "version": VERSION,
                     "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})

    def models(self, agent: str, build: Callable[[], list[Model]], spec: ModelSpec
               ) -> list[Model]:
        models = build()
        if agent not in self._agents:
            self._agents.add(agent)
            self._write({"kind": "agent", "agent": agent, "model": models[0].id,
                         "supports_tools": bool(models[0].supports_tools()),
                         "settings": _settings(spec, self.redactor)})
        return [_Recording(m, agent, self) for m in models]

    def exchange(self, agent: str, request: dict[str, Any], reply: Completion) -> None:
        """Store one successful call (`request` already redacted)."""
        self._write({"kind": "exchange", "agent": agent, "request": request,
                     "reply": self.redactor.value({
                         "text": reply.text,
                         "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments}
                                        for c in reply.tool_calls],
                         "finish_reason": reply.finish_reason,
                         "usage": {"prompt_tokens": reply.usage.prompt_tokens,
                                   "completion_tokens": reply.usage.completion_tokens},
                         "cost_usd": reply.cost_usd, "model": reply.model})})

    def _write(self, line: dict[str, Any]) -> None:
        if self._file is None:
            raise RecordingError("the recording is closed", path=shown_path(self.path))
        self._file.write(to_json(line) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _Recording:
    """A model whose successful calls are written to the recorder."""

    def __init__(self, model: Model, agent: str, recorder: Recorder) -> None:
        self.model, self.agent, self.recorder = model, agent, recorder
        self.id = model.id

    def supports_tools(self) -> bool:
        return self.model.supports_tools()

    async def complete(self, messages: list[Message], *, tools: list[dict[str, Any]] | None = None,
                       stop: list[str] | None = None) -> Completion:
        # redacted now: the loop goes on appending to `messages` after the call
        request = _request(messages, tools, stop, self.recorder.redactor)
        reply = await self.model.complete(messages, tools=tools, stop=stop)
        self.recorder.exchange(self.agent, request, reply)
        return reply

    def __getattr__(self, name: str) -> Any:  # a plugin's own attributes stay reachable
        return getattr(self.model, name)


# --------------------------------------------------------------------------- replaying

class _Exchange:
    """One recorded request and its reply."""

    def __init__(self, line: int, request: dict[str, Any], key: str, reply: Completion) -> None:
        self.line, self.request, self.key, self.reply = line, request, key, reply


class Replayer:
    """A ModelTap that answers every call from the recording at `path`; no model is built."""

    def __init__(self, path: str | os.PathLike[str], redactor: Redactor) -> None:
        self.path, self.redactor = Path(path), redactor
        self.shown = shown_path(path)
        self.agents: dict[str, dict[str, Any]] = {}
        """Agent name -> its `agent` line (model id, supports_tools)."""
        self.exchanges: dict[str, list[_Exchange]] = {}
        """Agent name -> its recorded exchanges, in order."""
        self._by_key: dict[tuple[str, str], list[_Exchange]] = {}
        self._used: dict[tuple[str, str], int] = {}
        self._calls: dict[str, int] = {}
        self._settings: dict[str, dict[str, Any]] = {}
        """Agent name -> the model settings of the spec being replayed."""
        self._failed: str | None = None
        self._read()

    def models(self, agent: str, build: Callable[[], list[Model]], spec: ModelSpec
               ) -> list[Model]:
        self._settings[agent] = _settings(spec, self.redactor)
        return [_Replay(agent, self)]

    def restart(self) -> None:
        """Start a new run on the same recording: calls are numbered from 1 again and an
        earlier mismatch is forgotten; identical requests go on taking their recorded replies
        in order."""
        self._calls.clear()
        self._failed = None

    def close(self) -> None:
        return None

    def answer(self, agent: str, messages: list[Message], tools: list[dict[str, Any]] | None,
               stop: list[str] | None) -> Completion:
        """The recorded reply to this request, or ReplayMismatch."""
        if self._failed is not None:
            # the run left the recording: a sub-agent's mismatch reaches its parent as a tool
            # failure, and the parent's next request, which no longer matches either, would
            # be reported instead of the cause
            raise ReplayMismatch(self._failed)
        call = self._calls[agent] = self._calls.get(agent, 0) + 1
        changed = _changed_settings(self.agents.get(agent, {}).get("settings"),
                                    self._settings.get(agent))
        if changed:  # the replies were another model's: they cannot stand for this one
            self._failed = (f"agent {agent!r} was recorded in {self.shown} with {changed}. "
                            f"If the change is intended, record again (--record)")
            raise ReplayMismatch(self._failed)
        request = _request(messages, tools, stop, self.redactor)
        key = (agent, _canonical(request))
        found = self._by_key.get(key)
        if not found:
            self._failed = self._mismatch(agent, call, request, key[1])
            raise ReplayMismatch(self._failed)
        used = self._used[key] = self._used.get(key, 0) + 1
        reply = found[min(used, len(found)) - 1].reply
        return Completion(reply.text, list(reply.tool_calls), reply.finish_reason,
                          Usage(reply.usage.prompt_tokens, reply.usage.completion_tokens),
                          reply.cost_usd, reply.model, latency_s=0.0)

    def _mismatch(self, agent: str, call: int, request: dict[str, Any], key: str) -> str:
        head = f"call {call} of agent {agent!r} is not in the recording {self.shown}"
        recorded = self.exchanges.get(agent)
        if not recorded:
            names = ", ".join(sorted(self.exchanges)) or "none"
            return f"{head}, which has no exchanges of that agent (it has: {names})"
        closest = max(recorded, key=lambda e: _shared_ends(e.key, key))
        return (f"{head}; against the closest recorded request (line {closest.line}), "
                f"{describe_difference(closest.request, request)}. If the change is intended, "
                f"record again (--record)")

    # -- reading
    def _read(self) -> None:
        try:
            lines = read_bounded(self.path, MAX_RECORDING_BYTES).decode("utf-8").splitlines()
        except TooLarge:
            raise RecordingError(f"larger than {MAX_RECORDING_BYTES // 2**20} MB",
                                 path=self.shown) from None
        except FileNotFoundError:
            raise RecordingError("no such recording file", path=self.shown) from None
        except UnicodeDecodeError as exc:
            raise RecordingError(f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                                 path=self.shown) from None
        except OSError as exc:  # a device or a pipe, which may never end, is not read
            raise RecordingError(exc.strerror if exc.errno == errno.EINVAL else
                                 f"cannot read the recording: {exc.strerror}",
                                 path=self.shown) from None
        header = False
        for n, text in enumerate(lines, 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except ValueError as exc:
                raise self._error(n, f"not JSON: {getattr(exc, 'msg', exc)}",
                                  getattr(exc, "colno", None)) from None
            except RecursionError:
                raise self._error(n, "not JSON this runner reads: nested too deep") from None
            if not isinstance(line, dict):
                raise self._error(n, "each line must be a JSON object")
            kind = line.get("kind")
            if not header:
                if kind != "recording":
                    raise self._error(n, 'not a recording: the first line must be '
                                         '{"kind": "recording", "version": 1, ...}')
                if line.get("version") != VERSION:
                    raise self._error(n, f"recording version {line.get('version')!r} is not "
                                         f"supported (this runner reads version {VERSION})")
                header = True
            elif kind == "agent":
                agent = self._field(line, n, "agent", str)
                self.agents.setdefault(agent, line)
            elif kind == "exchange":
                self._exchange(line, n)
            else:
                raise self._error(n, f"unknown kind {kind!r} (expected agent or exchange)")
        if not header:
            raise self._error(1, "the recording is empty")

    def _exchange(self, line: dict[str, Any], n: int) -> None:
        agent = self._field(line, n, "agent", str)
        request = self._field(line, n, "request", dict)
        reply = self._field(line, n, "reply", dict)
        if not isinstance(request.get("messages"), list):
            raise self._error(n, "request.messages must be a list")
        try:
            usage = reply.get("usage") or {}
            completion = Completion(
                text=reply["text"] if isinstance(reply["text"], str) else str(reply["text"]),
                tool_calls=[ToolCall(str(c["id"]), str(c["name"]), str(c["arguments"]))
                            for c in reply.get("tool_calls") or []],
                finish_reason=reply.get("finish_reason"),
                usage=Usage(_count_field(usage, "prompt_tokens"),
                            _count_field(usage, "completion_tokens")),
                cost_usd=_cost_field(reply), model=str(reply.get("model") or ""))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise self._error(n, f"malformed reply ({type(exc).__name__}: {exc})") from None
        request = {"messages": request["messages"], "tools": request.get("tools"),
                   "stop": request.get("stop")}
        exchange = _Exchange(n, request, _canonical(request), completion)
        self.exchanges.setdefault(agent, []).append(exchange)
        self._by_key.setdefault((agent, exchange.key), []).append(exchange)

    def _field(self, line: dict[str, Any], n: int, name: str, kind: type) -> Any:
        value = line.get(name)
        if not isinstance(value, kind):
            raise self._error(n, f"{line.get('kind')} line: {name!r} must be "
                                 f"{'a string' if kind is str else 'an object'}")
        return value

    def _error(self, line: int, reason: str, col: int | None = None) -> RecordingError:
        return RecordingError(reason, path=self.shown, line=line, col=col)


def _count_field(usage: dict[str, Any], name: str) -> int:
    value = usage.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"usage.{name} must be a whole number of tokens, not {value!r}")
    return value


def _cost_field(reply: dict[str, Any]) -> float | None:
    value = reply.get("cost_usd")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0 <= value < float("inf")):
        raise ValueError(f"cost_usd must be a number of dollars or null, not {value!r}")
    return value


class _Replay:
    """Stands in for an agent's models: answers from the recording."""

    def __init__(self, agent: str, replayer: Replayer) -> None:
        self.agent, self.replayer = agent, replayer
        info = replayer.agents.get(agent) or {}
        self.id = str(info.get("model") or "replay")
        self._tools = bool(info.get("supports_tools", False))

    def supports_tools(self) -> bool:
        return self._tools  # as recorded: `loop.style: auto` takes the same path

    async def complete(self, messages: list[Message], *, tools: list[dict[str, Any]] | None = None,
                       stop: list[str] | None = None) -> Completion:
        return self.replayer.answer(self.agent, messages, tools, stop)


# --------------------------------------------------------------------------- differences

SETTINGS = ("id", "temperature", "max_tokens")
"""The model settings a recording is made with: replies recorded under others do not count.
(`options` are not compared: they also carry a plugin's own settings, such as the fake
model's script.)"""


def _settings(spec: ModelSpec, redactor: Redactor) -> dict[str, Any]:
    return redactor.value(spec.model_dump(include=set(SETTINGS), mode="json"))


def _changed_settings(recorded: dict[str, Any] | None, now: dict[str, Any] | None) -> str:
    """'model X, temperature 0.0; this run has model Y, ...' for the settings that differ
    ('' when none do, or when the recording predates settings)."""
    if recorded is None or now is None:
        return ""
    keys = [k for k in SETTINGS if recorded.get(k) != now.get(k)]
    if not keys:
        return ""

    def listed(values: dict[str, Any]) -> str:
        return ", ".join(f"{'model' if k == 'id' else k} {json.dumps(values.get(k))}"
                         for k in keys)

    return f"{listed(recorded)}; this run has {listed(now)}"


def describe_difference(recorded: dict[str, Any], now: dict[str, Any]) -> str:
    """Where request `now` differs from `recorded`, short and readable."""
    parts: list[str] = []
    old_msgs, new_msgs = recorded.get("messages") or [], now.get("messages") or []
    for i, (old, new) in enumerate(zip(old_msgs, new_msgs), 1):
        if old != new:
            parts.append(_message_difference(i, old, new))
            break
    else:
        if len(new_msgs) > len(old_msgs):
            extra = new_msgs[len(old_msgs)]
            parts.append(f"message {len(old_msgs) + 1} ({_role(extra)}) is new: the recorded "
                         f"request had {_count(old_msgs)}, now {len(new_msgs)}")
        elif len(new_msgs) < len(old_msgs):
            gone = old_msgs[len(new_msgs)]
            parts.append(f"message {len(new_msgs) + 1} ({_role(gone)}) is missing: the recorded "
                         f"request had {_count(old_msgs)}, now {len(new_msgs)}")
    old_tools, new_tools = recorded.get("tools") or [], now.get("tools") or []
    if old_tools != new_tools:
        names_old, names_new = _tool_names(old_tools), _tool_names(new_tools)
        if names_old != names_new:
            parts.append(f"the tools differ: recorded {', '.join(names_old) or 'none'}; "
                         f"now {', '.join(names_new) or 'none'}")
        else:
            changed = [n for n, a, b in zip(names_new, old_tools, new_tools) if a != b]
            parts.append(f"the schema of tool {', '.join(changed)} differs: "
                         + _contrast(_canonical(old_tools[names_old.index(changed[0])]),
                                     _canonical(new_tools[names_new.index(changed[0])])))
    if (recorded.get("stop") or None) != (now.get("stop") or None):
        parts.append(f"the stop sequences differ: recorded {recorded.get('stop')!r}, "
                     f"now {now.get('stop')!r}")
    return "; ".join(parts) or "the requests differ only in form"


def _count(messages: list[Any]) -> str:
    return f"{len(messages)} message{'s' if len(messages) != 1 else ''}"


def _shared_ends(a: str, b: str) -> int:
    """How many characters two texts share at their start and end: a request with one edit
    shares everything but the edit with the request it was recorded as."""
    start = len(os.path.commonprefix([a, b]))
    end = len(os.path.commonprefix([a[start:][::-1], b[start:][::-1]]))
    return start + end


def _role(message: Any) -> str:
    return str(message.get("role")) if isinstance(message, dict) else "?"


def _tool_names(tools: list[Any]) -> list[str]:
    names = []
    for t in tools:
        fn = t.get("function") if isinstance(t, dict) else None
        names.append(str((fn or {}).get("name") or (t.get("name") if isinstance(t, dict)
                                                      else t)))
    return names


def _message_difference(i: int, old: Any, new: Any) -> str:
    if _role(old) != _role(new):
        return f"message {i} is now a {_role(new)} message; the recording has a {_role(old)} one"
    old_text = old.get("content") if isinstance(old, dict) else None
    new_text = new.get("content") if isinstance(new, dict) else None
    if isinstance(old_text, str) and isinstance(new_text, str) and old_text != new_text:
        at = len(os.path.commonprefix([old_text, new_text])) + 1
        return f"message {i} ({_role(new)}) differs at character {at}: " + \
            _contrast(old_text, new_text)
    return f"message {i} ({_role(new)}) differs: " + _contrast(_canonical(old), _canonical(new))


def _contrast(old: str, new: str, before: int = 30, span: int = 60, after: int = 30) -> str:
    """"recorded '...a b c...', now '...a x c...'": both texts around their first difference."""
    start = len(os.path.commonprefix([old, new]))
    tail = 0
    limit = min(len(old), len(new)) - start
    while tail < limit and old[-1 - tail] == new[-1 - tail]:
        tail += 1

    def window(text: str) -> str:
        end = len(text) - tail
        middle = text[start:end]
        if len(middle) > span:
            rest, more = middle[:span], True
        else:
            rest, more = middle + text[end:end + after], end + after < len(text)
        return repr(("..." if start > before else "") + text[max(0, start - before):start]
                    + rest + ("..." if more else ""))

    return f"recorded {window(old)}, now {window(new)}"
