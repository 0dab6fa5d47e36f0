"""Masking secrets before anything is shown, logged or stored: the one masking path; and
the one escaping of terminal control codes in what is shown.

`Redactor` masks secret values (in text and in the keys and values of data), passwords inside
URLs (`postgres://u:***@h`), secret-looking field names, and the field names and patterns a
spec's `trace:` asks for; `redact_text` and `redact_value` are its short forms for plain
secrets. `SECRET_NAME` says which environment variables hold secrets, `SECRET_FIELD` which
fields of data do. `printable` and `json_printable` make text from a model or a tool safe to
write to a terminal or a log: control codes are shown as escapes, never obeyed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .spec import TraceSpec

__all__ = ["MASK", "SECRET_NAME", "Redactor", "env_secrets", "named_secrets", "redact_text",
           "redact_value", "json_forms", "clip", "SECRET_FIELD", "URL_PASSWORD", "printable",
           "json_printable"]

MASK = "***"
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.I)
"""An environment variable (or `${VAR}`) whose value is a secret: broad on purpose, since a
variable's value can turn up anywhere (`AWS_ACCESS_KEY_ID`, `GH_TOKEN_2`, `PGPASSWORD`)."""
SECRET_FIELD = re.compile(
    r"(^|_)(api_?key|token|secret|password|passwd|authorization|credentials?)$", re.I)
"""A field of data (a tool input, a header, an option) whose value is masked: strict, since a
data field named `key` or `max_tokens` is usually no secret."""
URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s/?#@:\"'<>\\]{0,256}:)"
    r"(?P<password>[^\s/?#\"'<>\\]{1,256})@")
"""The password of a URL's userinfo (`scheme://user:PASSWORD@host`, the user may be empty):
masked in any text, known secret or not. Up to the last `@` before the host, since a
password with an unescaped `@` is a common mistake; a URL without a password never matches.
Each part is bounded, so hostile text cannot make the search quadratic."""
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""What a terminal obeys rather than shows: C0 controls but tab and newline (which are layout;
a carriage return is not), DEL, C1 controls (a lone 0x9b is a CSI), and the bidirectional
controls that reorder what is shown (Trojan Source)."""


def env_secrets(env: dict[str, str] | None = None) -> set[str]:
    """Values of secret-looking environment variables (long enough to be worth masking)."""
    env = dict(os.environ) if env is None else env
    found = {v for k, v in env.items() if SECRET_NAME.search(k) and len(v) >= 6}
    # a password inside a URL (DATABASE_URL=postgres://u:pw@h) is a secret on its own too
    found |= {m["password"] for v in env.values() if "://" in v
              for m in URL_PASSWORD.finditer(v) if len(m["password"]) >= 6}
    return found


def named_secrets(data: Any, env: Mapping[str, str]) -> set[str]:
    """Values of the variables a spec names as `api_key_env` (at any depth: the model, its
    fallbacks, a tool's options), whatever the names: a key is masked even in `MY_LLM`."""
    found: set[str] = set()
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            name = node.get("api_key_env")
            if isinstance(name, str) and len(env.get(name, "")) >= 6:
                found.add(env[name])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


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


def printable(value: object) -> str:
    """Text safe to write to a terminal or a log: control codes (escape sequences, carriage
    returns, C1, bidi overrides) shown as `\\x1b` or `\\u202e`, never obeyed; tabs and
    newlines kept."""
    text = str(value)
    return CONTROL.sub(_shown, text) if CONTROL.search(text) else text


def json_printable(text: str) -> str:
    """JSON text with the control codes `json.dumps(ensure_ascii=False)` leaves raw (DEL, C1,
    bidi) written as `\\u` escapes: safe on a terminal, and it decodes to the same value."""
    return CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _shown(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def json_forms(secrets: Iterable[str]) -> set[str]:
    """Each secret as it is and as it stands inside a JSON string (a quote or \\ escaped)."""
    return {f for s in secrets if s for f in (s, json.dumps(s, ensure_ascii=False)[1:-1])}


def _mask(text: str, longest_first: list[str]) -> str:
    for s in longest_first:
        if s in text:
            text = text.replace(s, MASK)
    return _mask_url_passwords(text) if "://" in text else text


def _mask_url_passwords(text: str) -> str:
    """URL_PASSWORD.sub, searched only near each `://` (a match holds one within its first
    33 characters): a pattern tried at every position of a long state costs 25 times more."""
    parts: list[str] = []
    last, i = 0, text.find("://")
    while i != -1:
        m = URL_PASSWORD.search(text, max(last, i - 33), i + 520)
        if m is None:
            i = text.find("://", i + 3)
            continue
        parts += [text[last:m.start("password")], MASK, "@"]
        last = m.end()
        i = text.find("://", last)
    return "".join(parts) + text[last:] if parts else text


_SCALARS = frozenset({int, float, bool, type(None)})

_KEY_ENDS = ('key"', 'token"', 'secret"', 'passw', 'authorization"', 'credential')
"""How every key SECRET_FIELD matches ends in lowercased JSON text (or more: a superset)."""
_KEY_ENDS_NL = ('key\\n"', 'token\\n"', 'secret\\n"', 'authorization\\n"')
"""The same before a key's last newline, which SECRET_FIELD's `$` also matches."""
_FOLDED = ("\u0130", "\u0131", "\u017f", "\u212a")
"""Non-ASCII letters that re.I matches with an ASCII one (İ ı ſ K), which lower() keeps."""


class Redactor:
    """Masks secrets, configured field names and patterns in anything a run stores (traces,
    recordings): `text()` for strings, `value()` for JSON-like data."""

    def __init__(self, secrets: Iterable[str] = (), keys: Iterable[str] = (),
                 patterns: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self.keys = {k.lower() for k in keys}
        joined = "|".join(f"(?:{p})" for p in patterns)
        self.pattern = re.compile(joined) if joined else None
        self._keys: dict[str, tuple[str, bool]] = {}
        """Key -> (the key as shown, whether its values are masked): the same few keys come
        back in every event."""
        self._forms = sorted(json_forms(self.secrets), key=len, reverse=True)
        """Each secret as it stands inside a JSON string (for `clean`)."""

    @classmethod
    def for_trace(cls, trace: TraceSpec, secrets: Iterable[str]) -> Redactor:
        """The redactor of a spec's `trace:` section: the secrets plus its keys and patterns."""
        return cls(secrets, trace.redact_keys, trace.redact_patterns)

    def clean(self, json_text: str) -> bool:
        """Whether `value()` would leave unchanged the data whose standard JSON
        (`runner.result.to_json`) is `json_text`: then that text can be stored as it is.

        A cheap look at the text instead of a walk over every node of the data (a few
        microseconds against tens for an event): no secret in it in either JSON form, no
        `://` (a URL's password), no key that may be secret-named, no `trace:` keys or
        patterns (they are matched against the data, not its JSON). It may say no where
        nothing would change (the walk then decides), never yes where something would."""
        if self.pattern is not None or self.keys or "://" in json_text:
            return False
        for form in self._forms:
            if form in json_text:
                return False
        low = json_text.lower()
        for end in _KEY_ENDS:
            if end in low:
                return False
        if '\\n"' in low:
            for end in _KEY_ENDS_NL:
                if end in low:
                    return False
        return json_text.isascii() or not any(c in json_text for c in _FOLDED)

    def text(self, text: str) -> str:
        text = _mask(text, self.secrets)
        return self.pattern.sub(MASK, text) if self.pattern is not None else text

    def _key(self, key: Any) -> tuple[Any, bool]:
        """A dict key as shown (a secret used as a key is masked like any text) and whether
        its value is masked."""
        if not isinstance(key, str):
            return key, False
        known = self._keys.get(key)
        if known is None:
            if len(self._keys) >= 4096:  # keys from tool data can be unbounded
                self._keys.clear()
            known = self._keys[key] = (self.text(key), key.lower() in self.keys
                                       or bool(SECRET_FIELD.search(key)))
        return known

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
            out: dict[Any, Any] = {}
            known = self._keys.get  # inlined on the hot path: every event is a dict
            for k, v in value.items():
                shown, masked = known(k) or self._key(k)
                if shown in out:  # two keys masked alike: keep both
                    n = 2
                    while f"{shown}#{n}" in out:
                        n += 1
                    shown = f"{shown}#{n}"
                out[shown] = MASK if v and masked else v if type(v) in _SCALARS else self.value(v)
            return out
        if isinstance(value, (list, tuple)):
            return [v if type(v) in _SCALARS else self.value(v) for v in value]
        return value
