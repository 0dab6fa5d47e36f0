"""Masking secrets before anything is shown, logged or stored: the one masking path.

`Redactor` masks secret values, secret-looking field names, and the field names and patterns
a spec's `trace:` asks for; `redact_text` and `redact_value` are its short forms for plain
secrets. `SECRET_NAME` says which environment variables hold secrets, `SECRET_FIELD` which
fields of data do.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .spec import TraceSpec

__all__ = ["MASK", "SECRET_NAME", "Redactor", "env_secrets", "redact_text", "redact_value",
           "json_forms", "clip", "SECRET_FIELD"]

MASK = "***"
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.I)
"""An environment variable (or `${VAR}`) whose value is a secret: broad on purpose, since a
variable's value can turn up anywhere (`AWS_ACCESS_KEY_ID`, `GH_TOKEN_2`, `PGPASSWORD`)."""
SECRET_FIELD = re.compile(
    r"(^|_)(api_?key|token|secret|password|passwd|authorization|credentials?)$", re.I)
"""A field of data (a tool input, a header, an option) whose value is masked: strict, since a
data field named `key` or `max_tokens` is usually no secret."""


def env_secrets(env: dict[str, str] | None = None) -> set[str]:
    """Values of secret-looking environment variables (long enough to be worth masking)."""
    env = dict(os.environ) if env is None else env
    return {v for k, v in env.items() if SECRET_NAME.search(k) and len(v) >= 6}


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value replaced by ***."""
    return _mask(text, sorted({s for s in secrets if s}, key=len, reverse=True))


def redact_value(value: Any, secrets: Iterable[str]) -> Any:
    """A copy of a JSON-like value with secrets and secret-named fields masked."""
    return Redactor(secrets).value(value)


def clip(text: str, limit: int = 400) -> str:
    """One line, at most `limit` characters, with secret-looking environment values masked:
    for a dependency's error message."""
    text = redact_text(" ".join(text.split()), env_secrets())
    return text[:limit] + ("..." if len(text) > limit else "")


def json_forms(secrets: Iterable[str]) -> set[str]:
    """Each secret as it is and as it stands inside a JSON string (a quote or \\ escaped)."""
    return {f for s in secrets if s for f in (s, json.dumps(s, ensure_ascii=False)[1:-1])}


def _mask(text: str, longest_first: list[str]) -> str:
    for s in longest_first:
        if s in text:
            text = text.replace(s, MASK)
    return text


_SCALARS = frozenset({int, float, bool, type(None)})


class Redactor:
    """Masks secrets, configured field names and patterns in anything a run stores (traces,
    recordings): `text()` for strings, `value()` for JSON-like data."""

    def __init__(self, secrets: Iterable[str] = (), keys: Iterable[str] = (),
                 patterns: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self.keys = {k.lower() for k in keys}
        joined = "|".join(f"(?:{p})" for p in patterns)
        self.pattern = re.compile(joined) if joined else None
        self._masked: dict[str, bool] = {}
        """Key -> whether its values are masked: the same few keys come back in every event."""

    @classmethod
    def for_trace(cls, trace: TraceSpec, secrets: Iterable[str]) -> Redactor:
        """The redactor of a spec's `trace:` section: the secrets plus its keys and patterns."""
        return cls(secrets, trace.redact_keys, trace.redact_patterns)

    def text(self, text: str) -> str:
        text = _mask(text, self.secrets)
        return self.pattern.sub(MASK, text) if self.pattern is not None else text

    def _masked_key(self, key: Any) -> bool:
        if not isinstance(key, str):
            return False
        masked = self._masked.get(key)
        if masked is None:
            if len(self._masked) >= 4096:  # keys from tool data can be unbounded
                self._masked.clear()
            masked = self._masked[key] = key.lower() in self.keys or bool(SECRET_FIELD.search(key))
        return masked

    def value(self, value: Any) -> Any:
        if type(value) in _SCALARS:  # most leaves of an event: nothing to mask
            return value
        if isinstance(value, str):
            if self.keys and value.lstrip()[:1] in ("{", "["):  # a tool's JSON text
                try:
                    parsed = json.loads(value)
                except ValueError:
                    return self.text(value)
                return self.text(json.dumps(self.value(parsed), ensure_ascii=False))
            return self.text(value)
        if isinstance(value, dict):
            return {k: MASK if v and self._masked_key(k) else self.value(v)
                    for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value
