"""Summary memory (`memory: {summarize: {after_tokens: 3000}}`, over any store): once a
session's history passes the threshold, its older turns are replaced in the prompt by a
model's summary, next to the recent turns kept whole.

The store keeps every message. The summary is stored beside the session (under
`SESSION + SUMMARY_SUFFIX`, one record per summary: the number of messages it stands for and
its text), so the next run reuses it, and extends it when more turns have grown old. The
summary call is one model call of the run: retried like any, counted in its usage and
budget, and traced (`memory_summarized`). A summary that fails leaves the history whole.
"""

from __future__ import annotations

import json
import time
from typing import Any

from . import events as ev
from .errors import ModelError
from .models import Message
from .models.retry import complete_with_retries

__all__ = ["history_for", "remembered", "condense", "estimate_tokens", "SUMMARY_SUFFIX"]

SUMMARY_SUFFIX = "\x1fsummary"
"""The summary of session S is kept in the same store as session `S\\x1fsummary`."""
PROMPT = """You keep the memory of a conversation between a user and an assistant. Write a \
summary of the conversation below for the assistant who continues it: keep every fact, name, \
number, decision, preference and open question; leave out greetings. At most {words} words.
{previous}
Conversation:
{turns}

Summary:"""


def estimate_tokens(messages: list[Message]) -> int:
    """About four characters a token, plus a few for each message's role."""
    return sum(len(str(m.get("content", ""))) // 4 + 4 for m in messages)


def _split(history: list[Message], keep_tokens: int) -> int:
    """Where the recent part begins: the newest messages within `keep_tokens`, in whole
    turns (a user message and what followed it), at least one turn."""
    used, start = 0, len(history)
    for i in range(len(history) - 1, -1, -1):
        used += estimate_tokens([history[i]])
        if used > keep_tokens and start < len(history):
            break
        if history[i].get("role") == "user":
            start = i
    return start


async def history_for(run: Any) -> list[Message]:
    """The session's history as the run's prompt sees it (empty without a session), read
    from the memory and recorded as read; then what the run was handed (`run.context`)."""
    session, spec = run.session, run.spec
    if session is None:  # this run neither reads nor keeps a history
        return list(run.context)
    cut = spec.memory.summarize or spec.memory.recall  # these see the whole history
    history = await run.agent.memory.load(session, None if cut else spec.memory.window)
    run.emit(ev.MemoryRead(run.run_id, len(run.result.steps), session, len(history)))
    return [*await remembered(run, session, history), *run.context]


async def remembered(run: Any, session: str, history: list[Message]) -> list[Message]:
    """What the prompt sees of the session's whole `history`: summarized when long
    (`memory.summarize`), cut to `memory.window`, and the earlier turns most like the
    question brought back (`memory.recall`)."""
    memory = run.spec.memory
    shown = await condense(run, session, history)
    if memory.recall is None:
        return shown  # the store already cut it to the window
    from .recall import recall  # the embedder loads only for specs that recall
    from .result import as_text

    if memory.summarize is None and memory.window:
        shown = shown[-memory.window:]  # loaded whole, so that recall can look further back
    if len(shown) == len(history):
        return shown
    return await recall(run, session, history, shown, as_text(run.result.input))


async def condense(run: Any, session: str, history: list[Message]) -> list[Message]:
    """`history` as the prompt should see it: whole if short, else the summary of its older
    turns followed by the recent ones."""
    spec = run.spec.memory.summarize
    if spec is None:
        return history
    before = estimate_tokens(history)
    if before <= spec.after_tokens:
        return history
    split = _split(history, spec.keep_tokens or spec.after_tokens // 3)
    older, recent = history[:split], history[split:]
    if not older:
        return history
    memory, key = run.agent.memory, session + SUMMARY_SUFFIX
    record = _record(await memory.load(key, 1))
    step = len(run.result.steps)
    model = spec.model or run.spec.model.id
    if record is not None and record[0] == len(older):
        text = record[1]
        event = ev.MemorySummarized(run.run_id, step, session, len(older), before, 0, model,
                                    reused=True)
    else:
        start, previous = (record if record is not None and record[0] < len(older)
                           else (0, ""))
        started = time.monotonic()
        try:
            reply = await _summarize(run, previous, older[start:], spec)
        except ModelError as exc:  # the history is still whole: use it, and say so
            run.emit(ev.MemorySummarized(run.run_id, step, session, len(older), before, before,
                                         model, error=str(exc)))
            run.emit(ev.Warned(run.run_id, step, f"the summary of session {session!r} failed "
                                                 f"({exc}); its whole history is used"))
            return history
        text = reply.text.strip()
        await memory.append(key, [{"role": "system", "content": json.dumps(
            {"messages": len(older), "text": text}, ensure_ascii=False)}])
        event = ev.MemorySummarized(run.run_id, step, session, len(older), before, 0, model,
                                    prompt_tokens=reply.usage.prompt_tokens,
                                    completion_tokens=reply.usage.completion_tokens,
                                    latency_s=time.monotonic() - started)
    condensed = [{"role": "system", "content": f"Summary of the earlier conversation: {text}"},
                 *recent]
    event.tokens_after = estimate_tokens(condensed)
    run.emit(event)
    return condensed


async def _summarize(run: Any, previous: str, turns: list[Message], spec: Any) -> Any:
    """One model call writing the summary; counted in the run's usage and budget."""
    run.budget.check_before_call()
    shown = "\n".join(f"{m['role']}: {m['content']}" for m in turns)
    prompt = PROMPT.format(words=max(20, spec.max_tokens * 3 // 4), turns=shown, previous=(
        f"\nThe summary of what came before:\n{previous}\n" if previous else ""))
    settings = run.spec.model.model_copy(update={"max_tokens": spec.max_tokens, "stop": []})
    reply = await complete_with_retries(run.agent.summary_models(), settings,
                                        [{"role": "user", "content": prompt}], run.budget)
    run.budget.charge(run, reply)
    return reply


def _record(rows: list[Message]) -> tuple[int, str] | None:
    """(messages it stands for, text) of the last stored summary, if it reads as one."""
    if not rows:
        return None
    try:
        data = json.loads(str(rows[-1]["content"]))
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("messages"), int) and \
            isinstance(data.get("text"), str):
        return data["messages"], data["text"]
    return None
