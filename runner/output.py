"""Structured final answers: parse JSON out of the model's text and check it against a schema."""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import OutputError

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
