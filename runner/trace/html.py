"""`runner trace view`: a run as one self-contained HTML page (no network, no CDN).

The run's tree is embedded as JSON in a `<script type="application/json">` block and drawn
by a small inline script that only ever sets `textContent`, so nothing from the trace is
read as HTML. A Content-Security-Policy allows that one script (by its hash) and nothing
from anywhere else. Messages are stored once and referenced by index from every model call
that sent them, so the page grows with the conversation, not with its square.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["render_page"]

TEMPLATE = "trace.html.j2"
_TEMPLATES = Path(__file__).parent.parent / "templates"


def render_page(tree: dict[str, Any]) -> str:
    """The HTML page of a run tree (`runner.trace.reader.build_tree`)."""
    import jinja2
    from markupsafe import Markup

    messages: list[Any] = []
    payload = {"run": _run(tree, messages, {}, _Ids()), "messages": messages}
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(_TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["csp_hash"] = _csp_hash
    title = f"{tree.get('agent') or 'run'} · {tree.get('status')} · run {tree.get('run_id')}"
    return env.get_template(TEMPLATE).render(title=title, data=Markup(_script_json(payload)))


class _Ids:
    """Element ids for runs, steps and tool calls, unique across sub-runs."""

    def __init__(self) -> None:
        self.n = 0

    def next(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"


def _run(run: dict[str, Any], messages: list[Any], seen: dict[str, int],
         ids: _Ids) -> dict[str, Any]:
    """A copy of `run` with ids added and each model call's messages as indexes into
    `messages` (the input tree is left as it was)."""
    items = []
    for item in run.get("items", []):
        if item.get("type") == "step":
            model = dict(item.get("model") or {})
            model["messages"] = [_intern(m, messages, seen) for m in model.get("messages") or []]
            tools = [{**call, "id": ids.next("c"),
                      "run": _run(call["run"], messages, seen, ids) if call.get("run") else None}
                     for call in item.get("tools", [])]
            item = {**item, "id": ids.next("s"), "model": model, "tools": tools}
        elif item.get("type") == "subrun":
            item = {**item, "run": _run(item["run"], messages, seen, ids)}
        items.append(item)
    return {**run, "id": ids.next("r"), "items": items}


def _intern(message: Any, messages: list[Any], seen: dict[str, int]) -> int:
    key = json.dumps(message, sort_keys=True, ensure_ascii=False, default=str)
    if key not in seen:
        seen[key] = len(messages)
        messages.append(message)
    return seen[key]


def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element: no `<` at all, so neither `</script>`
    nor `<!--` can end or change the block (JSON has `<` only inside strings)."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str, allow_nan=False)
    except ValueError:  # NaN or Infinity from a hand-edited trace: JSON.parse rejects them
        text = json.dumps(_finite(value), ensure_ascii=False, default=str)
    return text.replace("<", "\\u003c")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _csp_hash(script: str) -> Any:
    """The CSP source that allows exactly this inline script."""
    from markupsafe import Markup

    digest = hashlib.sha256(str(script).encode("utf-8")).digest()
    return Markup(f"'sha256-{base64.b64encode(digest).decode()}'")
