"""Masking secrets before anything is shown, logged or stored."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from .spec import SECRET_NAME

MASK = "***"
_SECRET_KEYS = re.compile(r"(^|_)(api_?key|token|secret|password|passwd|authorization|credentials?)$",
                          re.I)


def env_secrets(env: dict[str, str] | None = None) -> set[str]:
    """Values of secret-looking environment variables (long enough to be worth masking)."""
    env = dict(os.environ) if env is None else env
    return {v for k, v in env.items() if SECRET_NAME.search(k) and len(v) >= 6}


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value replaced by ***."""
    for s in sorted(secrets, key=len, reverse=True):
        if s:
            text = text.replace(s, MASK)
    return text


def redact_value(value: Any, secrets: Iterable[str]) -> Any:
    """A copy of a JSON-like value with secrets and secret-named keys masked."""
    secrets = list(secrets)
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and _SECRET_KEYS.search(k)
                    and v else redact_value(v, secrets))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v, secrets) for v in value]
    if isinstance(value, str):
        return redact_text(value, secrets)
    return value
