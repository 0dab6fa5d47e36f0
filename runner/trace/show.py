"""`runner trace show`: a run's trace as a timeline on the terminal, sub-agents and retries
nested under what started them. Everything from the trace is shown as plain text: rich
markup and terminal control codes in a prompt or a tool's output are printed, not obeyed."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ..redact import printable as plain

__all__ = ["print_run"]

CLIP_CHARS = 300
CLIP_LINES = 6
PIPE_WIDTH = 120
"""Width when the output is not a terminal (and COLUMNS is not set): rich would use 80."""

STATUS_STYLE = {"finished": "bold green", "running": "yellow", "unfinished": "bold yellow",
                "interrupted": "bold yellow"}


def print_run(tree: dict[str, Any], full: bool = False) -> None:
    """Print the run `tree` (from `traces.build_tree`) to stdout; `full` keeps whole texts and
    shows each run's last prompt and every raw reply."""
    from rich.console import Console

    console = Console(highlight=False, emoji=False, markup=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = PIPE_WIDTH
    view = _View(tree["start"] or 0.0, full, console.width)
    console.print(view.header(tree))
    console.print()
    console.print(view.timeline(tree))


class _View:
    """Renders runs, steps and calls; offsets are from the top-level run's start."""

    def __init__(self, start: float, full: bool, width: int) -> None:
        self.start, self.full, self.width = start, full, width

    # -- the header -------------------------------------------------------------------

    def header(self, run: dict[str, Any]) -> Any:
        from rich.console import Group
        from rich.text import Text

        rows: list[tuple[str, Any]] = [
            ("agent", Text.assemble((plain(run["agent"]), "bold"), "  run ",
                                    plain(run["run_id"]), "  ", _status(run)))]
        model = Text(plain(run["model"]))
        settings = run.get("settings") or {}
        shown = [f"{k} {settings[k]}" for k in ("style", "temperature", "max_tokens",
                                                "max_iterations") if settings.get(k) is not None]
        if shown:
            model.append(f"  ({', '.join(shown)})", "dim")
        rows += [("model", model),
                 ("started", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["start"] or 0))),
                 ("totals", " · ".join(self._totals(run, top=True)))]
        tools = [t.get("function", {}).get("name", "?") for t in run.get("tools") or []]
        if tools:
            rows.append(("tools", plain(", ".join(tools))))
        rows.append(("input", self.clip(run["input"])))
        if run["error"]:
            rows.append(("error", Text(self.clip(run["error"]), "red")))
        if run["answer"] is not None:
            rows.append(("answer" if run["status"] == "finished" else "partial answer",
                         Text(self.clip(run["answer"]), "green")))
        if run["status"] == "unfinished":
            rows.append(("note", Text(
                f"the trace ends at {self.offset(last_time(run))} without the run's end: the "
                f"process stopped (crashed or was killed) while it ran", "yellow")))
        indent = max(len(label) for label, _ in rows) + 2
        lines = []
        for label, value in rows:
            if not isinstance(value, Text):
                value = Text(value)
            if "\n" in value.plain or len(value) > self.width - indent:
                value = Text(_hang(value.plain, indent, self.width), value.style)
            lines.append(Text.assemble((label.ljust(indent), "bold"), value))
        return Group(*lines)

    def _totals(self, run: dict[str, Any], top: bool = False) -> list[str]:
        took = run["duration_s"] if run["duration_s"] is not None else last_time(run) - run["start"]
        steps = run.get("steps")
        if steps is None:
            steps = sum(1 for i in run["items"] if i["type"] == "step")
        used = (run["prompt_tokens"], run["completion_tokens"], run["cost_usd"])
        if run["status"] == "unfinished":  # no run_ended: add up the calls that were recorded
            used = spent(run)
        parts = [duration(took), f"{steps} step{'s' if steps != 1 else ''}",
                 tokens(used[0], used[1])]
        budget = run.get("budget") or {}
        if top and "prompt_tokens" in budget and (budget["prompt_tokens"], budget.get(
                "completion_tokens")) != (run["prompt_tokens"], run["completion_tokens"]):
            parts[-1] += (f" ({tokens(budget['prompt_tokens'], budget.get('completion_tokens'))}"
                          f" with sub-agents)")
        if top or used[2] is not None:
            parts.append(cost(used[2]))
        if run.get("resumes"):
            parts.append(f"resumed {run['resumes']}×")
        return parts

    # -- the timeline ------------------------------------------------------------------

    def timeline(self, run: dict[str, Any]) -> Any:
        from rich.text import Text
        from rich.tree import Tree

        root = Tree(Text("timeline"), hide_root=True, guide_style="dim")
        self.items(root, run)
        return root

    def items(self, node: Any, run: dict[str, Any]) -> None:
        from rich.text import Text

        last_call = next((i for i in reversed(run["items"]) if i["type"] == "step"
                          and i["model"].get("messages")), None)
        for item in run["items"]:
            kind = item["type"]
            if kind == "step":
                self.step(node, item, item is last_call)
            elif kind == "memory":
                extra = f" ({item.get('recalled')} recalled)" if item["op"] == "recalled" \
                    else ""
                if item["op"] == "summarized":  # the older turns a summary stands for
                    extra = (f" ({item.get('tokens_before')} -> {item.get('tokens_after')} "
                             f"tokens" + (", reused" if item.get("reused") else "") + (
                                 f", failed: {plain(item['error'])}" if item.get("error")
                                 else "") + ")")
                node.add(Text.assemble(self.at(item["t"]), (
                    f"memory {item['op']}: session {plain(item['session'])!r}, "
                    f"{item['messages']} message{'s' if item['messages'] != 1 else ''}{extra}",
                    "dim")))
            elif kind == "warning":
                node.add(Text.assemble(self.at(item["t"]),
                                       ("warning: " + self.clip(item["message"]), "yellow")))
            elif kind == "resumed":
                node.add(Text.assemble(self.at(item["t"]), ("↻ resumed from its checkpoint",
                                                            "bold yellow")))
            elif kind == "subrun":
                self.subrun(node, item["run"])
            elif kind == "review":
                verdict = ("approved", "bold green") if item["approved"] else \
                    ("not approved: ", "bold yellow")
                node.add(Text.assemble(self.at(item["t"]), (f"review {item['round']}: ", "bold"),
                                       verdict, self.clip("; ".join(map(str, item["problems"])))))
        if run["status"] not in ("finished", "unfinished") and run.get("error"):
            node.add(Text.assemble(self.at(run["end"]), (f"■ {run['status']}: ", "bold red"),
                                   (self.clip(run["error"]), "red")))
        elif run["status"] == "unfinished":
            node.add(Text.assemble(self.at(last_time(run)),
                                   ("… the trace ends here (no run_ended)", "bold yellow")))

    def step(self, parent: Any, step: dict[str, Any], last_call: bool) -> None:
        from rich.text import Text

        last = max([step["index"] or 0, *(c["index"] or 0 for c in step["tools"])])
        name = f"step {step['index']}" if last == step["index"] else \
            f"steps {step['index']}-{last}"  # a reply with parallel tool calls
        label = Text.assemble(self.at(step["start"]), (name, "bold"))
        if step["end"] is not None and step["end"] > step["start"]:
            label.append(f"  {duration(step['end'] - step['start'])}", "dim")
        node = parent.add(label)
        self.model(node, step, last_call)
        if step["thought"]:
            node.add(Text.assemble(("thought: ", "italic cyan"), self.clip(step["thought"])))
        for call in step["tools"]:
            self.tool(node, call)
        if step["failure"]:
            node.add(Text.assemble(("not accepted, the model was told: ", "yellow"),
                                   self.clip(step["failure"])))
        for warning in step["warnings"]:
            node.add(Text("warning: " + self.clip(warning), "yellow"))
        if step["answer"] is not None:
            node.add(Text.assemble(("final answer: ", "bold green"),
                                   (self.clip(step["answer"]), "green")))

    def model(self, parent: Any, step: dict[str, Any], last_call: bool) -> None:
        from rich.text import Text

        m = step["model"]
        label = Text.assemble(self.at(m["start"]), ("model ", "bold magenta"),
                              plain(m.get("model") or "?"))
        if m["end"] is None:
            label.append("  no reply recorded", "yellow")
        else:
            facts = [duration(m.get("latency_s")),
                     tokens(m.get("prompt_tokens"), m.get("completion_tokens"))]
            if m.get("cost_usd") is not None:
                facts.append(cost(m["cost_usd"]))
            if (m.get("attempts") or 1) > 1:
                facts.append(f"{m['attempts']} attempts")
            if m.get("finish_reason") not in (None, "stop", "tool_calls"):
                facts.append(f"finish: {plain(m['finish_reason'])}")
            label.append("  " + " · ".join(facts), "dim")
        node = parent.add(label)
        for r in step["retries"]:
            node.add(Text.assemble(self.at(r["t"]), (f"attempt {r['attempt']} failed: ", "red"),
                                   (self.clip(r["error"]), "red"),
                                   (f"; retried after {duration(r['wait_s'])}", "dim")))
        if m["end"] is not None and (self.full or (step["failure"] and m.get("text"))):
            node.add(Text.assemble(("reply: ", "dim"), self.clip(m.get("text") or "")))
            for c in (m.get("tool_calls") or []) if self.full else []:
                node.add(Text.assemble(("tool call: ", "dim"), plain(
                    f"{c.get('name')} {c.get('arguments')} (id {c.get('id')})")))
        if self.full and last_call:
            messages = m.get("messages") or []
            prompt = node.add(Text(f"prompt: {len(messages)} message"
                                   f"{'s' if len(messages) != 1 else ''} (the run's last call)",
                                   "dim"))
            for msg in messages:
                prompt.add(message(msg))

    def tool(self, parent: Any, call: dict[str, Any]) -> None:
        from rich.text import Text

        label = Text.assemble(self.at(call["start"]), (plain(call["tool"]), "bold blue"),
                              action_input(call["input"], self.full))
        if call["duration_s"] is not None:
            label.append(f"  {duration(call['duration_s'])}", "dim")
        node = parent.add(label)
        progress = call.get("progress") or []
        if progress:  # the last updates the server sent (an MCP tool's progress)
            last = progress[-1]
            total = f"/{last['total']:g}" if isinstance(last.get("total"), (int, float)) else ""
            shown = f"{last['progress']:g}" if isinstance(last.get("progress"), (int, float)) \
                else "?"
            node.add(Text.assemble(("progress: ", "dim"), plain(
                f"{len(progress)} update{'s' if len(progress) != 1 else ''}, last {shown}{total}"
                + (f" {last['message']}" if last.get("message") else ""))))
        if call["run"] is not None:
            self.subrun(node, call["run"])
        if call["end"] is None:
            node.add(Text("no result recorded", "yellow"))
        elif call["error"]:
            node.add(Text.assemble(("error: ", "bold red"), (self.clip(call["output"]), "red")))
        else:
            node.add(Text.assemble(("→ ", "dim"), self.clip(call["output"])))

    def subrun(self, parent: Any, run: dict[str, Any]) -> None:
        from rich.text import Text

        label = Text.assemble(self.at(run["start"]), (f"▶ {plain(run['agent'])}", "bold"),
                              f"  run {plain(run['run_id'])}  ", _status(run),
                              ("  " + " · ".join(self._totals(run)), "dim"))
        self.items(parent.add(label), run)

    # -- text ------------------------------------------------------------------------------

    def at(self, t: float | None) -> tuple[str, str]:
        return (f"{self.offset(t)}  ", "dim")

    def offset(self, t: float | None) -> str:
        return "+?" if t is None else f"+{max(0.0, t - self.start):.3f}s"

    def clip(self, value: Any) -> str:
        """The value as plain text, cut to a few lines unless --full."""
        text = plain(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                                     default=str))
        if self.full:
            return text
        return clip(text, CLIP_CHARS, CLIP_LINES)


def run_table(rows: list[dict[str, Any]]) -> str:
    """`runner trace list`: one line per run (see trace.reader.list_traces)."""
    def dash(value: Any) -> str:
        return "-" if value is None else str(value)

    lines = [f"{'RUN':<14}{'AGENT':<16}{'STATUS':<22}{'STEPS':>5}{'TOKENS':>9}{'COST $':>10}"
             f"{'TIME':>9}  STARTED"]
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"] or 0))
        cost = "-" if r["cost_usd"] is None else f"{r['cost_usd']:.4f}"
        took = "-" if r["duration_s"] is None else f"{r['duration_s']:.2f}s"
        lines.append(plain(
            f"{r['run_id']:<14}{str(r['agent'])[:15]:<16}{str(r['status'])[:21]:<22}"
            f"{dash(r['steps']):>5}{dash(r['tokens']):>9}{cost:>10}{took:>9}  {when}"
            + (f"  ({r['error']})" if r.get("error") else "")))  # an unreadable file says why
    return "\n".join(lines)


def clip(text: str, chars: int, lines: int) -> str:
    cut = text[:chars]
    kept = cut.split("\n")[:lines]
    short = "\n".join(kept)
    if len(short) == len(text):
        return text
    return f"{short} … ({len(text) - len(short)} more characters; --full shows all)"


def action_input(value: Any, full: bool) -> str:
    text = plain(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                                 default=str))
    if not full:
        text = clip(text, 200, 1)
    return f"[{text}]" if isinstance(value, str) else f" {text}"


def message(msg: dict[str, Any]) -> Any:
    from rich.text import Text

    role = str(msg.get("role", "?"))
    text = Text.assemble((f"[{plain(role)}] ", "bold"))
    if msg.get("tool_call_id"):
        text.append(f"(call {plain(msg['tool_call_id'])}) ", "dim")
    content = msg.get("content")
    if content is not None:
        text.append(plain(content if isinstance(content, str) else json.dumps(
            content, ensure_ascii=False, default=str)))
    for c in msg.get("tool_calls") or []:
        f = c.get("function", {})
        text.append(f"\n→ {plain(f.get('name'))} {plain(f.get('arguments'))} "
                    f"(id {plain(c.get('id'))})", "dim")
    return text


def _hang(text: str, indent: int, width: int) -> str:
    """`text` wrapped to fit after an `indent`-wide label, its later lines under its first."""
    import textwrap

    room = max(20, width - indent)
    lines = [w for line in text.split("\n") for w in textwrap.wrap(line, room) or [""]]
    return "\n".join(" " * indent + line if line and i else line for i, line in enumerate(lines))


def _status(run: dict[str, Any]) -> Any:
    from rich.text import Text

    status = str(run["status"] or "?")
    return Text(plain(status), STATUS_STYLE.get(status, "bold red"))


def spent(run: dict[str, Any]) -> tuple[int, int, float | None]:
    """Tokens and cost of the run's own model calls, as recorded."""
    calls = [i["model"] for i in run["items"] if i["type"] == "step" and i["model"]["end"]]
    costs = [m["cost_usd"] for m in calls if m.get("cost_usd") is not None]
    return (sum(m.get("prompt_tokens") or 0 for m in calls),
            sum(m.get("completion_tokens") or 0 for m in calls), sum(costs) if costs else None)


def last_time(run: dict[str, Any]) -> float:
    """The latest time anything in the run (its sub-runs included) was recorded."""
    times = [run["start"] or 0.0, run["end"] or 0.0]
    for item in run["items"]:
        times.append(item.get("t") or 0.0)
        if item["type"] == "step":
            times += [item["end"] or 0.0, item["model"]["end"] or 0.0]
            times += [r["t"] or 0.0 for r in item["retries"]]
            for call in item["tools"]:
                times += [call["start"] or 0.0, call["end"] or 0.0]
                if call["run"] is not None:
                    times.append(last_time(call["run"]))
        elif item["type"] == "subrun":
            times.append(last_time(item["run"]))
    return max(times)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def tokens(prompt: int | None, completion: int | None) -> str:
    return f"{prompt or 0}+{completion or 0} tokens"


def cost(usd: float | None) -> str:
    if usd is None:
        return "cost unknown"
    return f"${usd:.6f}" if 0 < usd < 0.001 else f"${usd:.4f}"
