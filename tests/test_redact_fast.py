"""`Redactor.clean`: the look at an event's JSON text that lets a trace skip the walk over
its data. It may say no where nothing would be masked; it must never say yes where something
would. Checked on hand-picked cases and on seeded random data built from the things that get
masked (secrets in values and keys, in both JSON forms; secret-named keys in any case, with
the Unicode letters re.I folds; URL passwords; newlines before a key's end)."""

from __future__ import annotations

import random
from typing import Any

from runner.redact import Redactor
from runner.result import to_json

SECRET = 'sk-live-"q\\uote\n-7f3a'
"""A secret with a quote, a backslash and a newline: its JSON form differs from itself."""


def _unchanged(r: Redactor, data: Any) -> bool:
    return to_json(r.value(data)) == to_json(data)


def test_clean_says_yes_for_an_ordinary_event_and_the_walk_agrees() -> None:
    r = Redactor([SECRET, "hunter2-pw"])
    event = {"kind": "model_called", "run_id": "abc123", "step": 3, "t": 1.7e9,
             "prompt_tokens": 10, "completion_tokens": 5, "cost_usd": None, "text": "4\n",
             "tool_calls": [{"id": "call_1", "name": "calculator",
                             "arguments": '{"expression": "3+1"}'}], "budget": {"tokens": 1}}
    text = to_json(event)
    assert r.clean(text) and _unchanged(r, event)


def test_clean_says_no_wherever_the_walk_masks() -> None:
    r = Redactor([SECRET])
    for data in ({"a": f"x{SECRET}y"}, {f"k{SECRET}": 1}, {"dsn": "postgres://u:pw@h/db"},
                 {"api_key": "v"}, {"ApiKey": "v"}, {"X_TOKEN": "v"}, {"password": "v"},
                 {"passwd": "v"}, {"authorization": "v"}, {"credentials": "v"},
                 {"token\n": "v"}, {"pa\u017fsword": "v"}, {"authorİzation": "v"},
                 {"api_\u212aey": "v"}, [{"nested": {"client_secret": ["v"]}}]):
        assert not _unchanged(r, data), data
        assert not r.clean(to_json(data)), data
    # trace keys and patterns are matched against the data: never judged from the text
    assert not Redactor([], keys=["ssn"]).clean(to_json({"a": 1}))
    assert not Redactor([], patterns=[r"\d{16}"]).clean(to_json({"a": 1}))


_WORDS = ["a", "text", "token", "tokens", "prompt_tokens", "api_key", "APIKEY", "Secret",
          "x_password", "passwd", "Authorization", "credential", "credentials", "key", "monkey",
          "pa\u017fsword", "authorİzation", "api_\u212aey", "\u0131", "café", "猫", "\n", "\\",
          '"', "://", "postgres://u:pw@h/db", "https://example.com/a@b", "tok\n", "token\n",
          "secret\n", SECRET, SECRET[:5], "hunter2-pw", "@", ":", " "]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))


def _data(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.35:
        return rng.choice([_word(rng), _word(rng), 1, 0, 2.5, None, True, "", float("nan")])
    if roll < 0.7:
        return {_word(rng): _data(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return [_data(rng, depth + 1) for _ in range(rng.randint(0, 3))]


def test_clean_never_says_yes_where_the_walk_would_mask_anything() -> None:
    rng = random.Random(14)
    r = Redactor([SECRET, "hunter2-pw"])
    yes = 0
    for _ in range(20000):
        data = _data(rng)
        text = to_json(data)
        if r.clean(text):
            yes += 1
            assert to_json(r.value(data)) == text, data
    assert yes > 1000  # the fast path is taken for a good share of them
