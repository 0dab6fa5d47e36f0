"""The grammar (llama.cpp GBNF) that holds the embedded model to the text ReAct format: each
reply is one thought line, then either `Action: TOOL[INPUT]` naming one of the agent's tools
or `Final Answer: ...` on one line. A tool's input follows its argument schema where the
schema says enough: a single string argument with a `pattern` is held to it (the
calculator's is an arithmetic expression, so "15% of 200" cannot be written), several
arguments are a JSON object of their schema, any other single argument is free text without
`]` or a line break. Rules come from llama-cpp-python's own JSON-schema converter; nothing
here parses a regex by hand.

The reply ends where the grammar does (no `Observation:` of the model's own), so a step also
generates fewer tokens."""

from __future__ import annotations

import re
from typing import Any

THOUGHT = r'[^\n]*'
FREE_INPUT = r"^[^\]\n]+$"
ANSWER = r'"Final Answer: " [^\n]+ "\n"?'


def _converter(raw_pattern: bool) -> Any:
    from llama_cpp.llama_grammar import SchemaConverter

    return SchemaConverter(prop_order={}, allow_fetch=False, dotall=False,
                           raw_pattern=raw_pattern)


def _rule_name(tool: str) -> str:
    """A GBNF rule name for a tool's input (rule names are letters, digits and dashes)."""
    return "in-" + (re.sub(r"[^A-Za-z0-9]+", "-", tool).strip("-").lower() or "tool")


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def react_grammar(tools: list[dict[str, Any]], patterns: bool = True) -> str:
    """GBNF for one text ReAct reply with these OpenAI-style tool schemas; without
    `patterns`, a single string argument is free text whatever its pattern says."""
    raw, json_ = _converter(True), _converter(False)
    actions, seen = [], set()
    for schema in tools:
        fn = schema.get("function") or {}
        name = str(fn.get("name") or "")
        params = fn.get("parameters") if isinstance(fn.get("parameters"), dict) else {}
        props = params.get("properties") if isinstance(params.get("properties"), dict) else {}
        rule = _rule_name(name)
        while rule in seen:  # two names that differ only in punctuation
            rule += "-x"
        seen.add(rule)
        if not props:
            actions.append(_literal(f"{name}[]"))
            continue
        if len(props) == 1:
            (prop,) = props.values()
            pattern = prop.get("pattern") if patterns and isinstance(prop, dict) and \
                prop.get("type") == "string" else None
            try:
                raw.visit({"type": "string", "pattern": str(pattern or FREE_INPUT)}, rule)
            except Exception:  # a regex the converter cannot read (it raises what it likes)
                raw.visit({"type": "string", "pattern": FREE_INPUT}, rule)
        else:
            try:
                json_.visit(params, rule)
            except Exception:  # a schema the converter cannot read: any JSON object line
                json_.visit({"type": "object"}, rule)
        actions.append(f'{_literal(name + "[")} {rule} "]"')
    lines = _merged(raw.format_grammar(), json_.format_grammar())
    step = ANSWER if not actions else f'("Action: " ({" | ".join(actions)}) | {ANSWER})'
    lines.append(f'root ::= {THOUGHT} "\\n" {step}')
    return "\n".join(lines) + "\n"


def _merged(*grammars: str) -> list[str]:
    """The rules of several converters' grammars, each shared rule (`space`) once."""
    rules: dict[str, str] = {}
    for text in grammars:
        for line in text.splitlines():
            name, sep, body = line.partition(" ::= ")
            if not sep:
                continue
            if rules.setdefault(name, body) != body:
                raise ValueError(f"grammar rule {name!r} defined twice, differently")
    return [f"{n} ::= {b}" for n, b in rules.items()]
