"""Turning model replies into actions or a final answer: every text ReAct dialect the
parser documents, the rules for odd replies, and native tool calls."""

from __future__ import annotations

import pytest

from runner.models import ToolCall
from runner.parsing import (FORMAT_HINT, MAX_DEPTH, Action, RawArguments, parse_text,
                            parse_tool_calls)

# (reply, tool, input) for replies that must yield exactly one action.
ACTIONS = {
    "bracket": ("Thought: add them\nAction: calculator[2+2]", "calculator", "2+2"),
    "action input": ("Thought: add them\nAction: calculator\nAction Input: 2+2",
                     "calculator", "2+2"),
    "ACTION_INPUT json": ('ACTION: calculator\nACTION_INPUT: {"expression": "2+2"}',
                          "calculator", '{"expression": "2+2"}'),
    "multi-line json input": ('Action: calculator\nAction Input: {\n  "expression": "2+2"\n}',
                              "calculator", '{\n  "expression": "2+2"\n}'),
    "code fence": ("Thought: add them\n```\nAction: calculator[2+2]\n```", "calculator", "2+2"),
    "code fence with language": ("```text\nThought: add them\nAction: calculator[2+2]\n```",
                                 "calculator", "2+2"),
    "fenced json input": ('Action: calculator\nAction Input:\n```json\n{"expression": "2+2"}\n```',
                          "calculator", '{"expression": "2+2"}'),
    "bold label": ("**Thought:** add them\n**Action:** calculator[2+2]", "calculator", "2+2"),
    "bold label, colon outside": ("**Action**: calculator[2+2]", "calculator", "2+2"),
    "bold action input": ("**Action:** calculator\n**Action Input:** 2+2", "calculator", "2+2"),
    "markdown heading": ("### Action: calculator[2+2]", "calculator", "2+2"),
    "crlf": ("Thought: add them\r\nAction: calculator[2+2]\r\n", "calculator", "2+2"),
    "bare cr": ("Thought: add them\rAction: calculator[2+2]", "calculator", "2+2"),
    "leading blank lines": ("\n\n  \nThought: add them\nAction: calculator[2+2]",
                            "calculator", "2+2"),
    "fullwidth colon": ("Thought\uff1a add them\nAction\uff1a calculator[2+2]",
                        "calculator", "2+2"),
    "lower case": ("thought: add them\naction: calculator[2+2]", "calculator", "2+2"),
    "upper case": ("THOUGHT: add them\nACTION: calculator[2+2]", "calculator", "2+2"),
    "lower case action input": ("action: calculator\naction input: 2+2", "calculator", "2+2"),
    "tab after colon": ("Action:\tcalculator[2+2]", "calculator", "2+2"),
    "space before colon": ("Action : calculator[2+2]", "calculator", "2+2"),
    "brackets inside the input": ("Action: calculator[max(1, [2][0])]", "calculator",
                                  "max(1, [2][0])"),
    "multi-line bracket input": ("Action: search[first line\nsecond line]", "search",
                                 "first line\nsecond line"),
    "chatter after the action": ("Action: calculator[2+2]\nI will wait for the result.",
                                 "calculator", "2+2"),
    "dotted tool name": ("Action: web.search[cats]", "web.search", "cats"),
    "a group echoed after the input": ("Action: search[How do I resume?][search]", "search",
                                       "How do I resume?"),
    "groups echoed after the input": ("Action: search[cats] [1][x]", "search", "cats"),
    "a lone bracket inside the input": ("Action: search[what does ] mean]", "search",
                                        "what does ] mean"),
    "an index after a list input": ("Action: calculator[[1, 2][0]]", "calculator", "[1, 2][0]"),
    "everything at once": (
        "\r\n```\r\n**THOUGHT\uff1a** add\r\n**ACTION\uff1a** calculator[2+2]\r\n```",
        "calculator", "2+2"),
}


@pytest.mark.parametrize("reply,tool,arg", ACTIONS.values(), ids=list(ACTIONS))
def test_every_dialect_yields_the_action(reply: str, tool: str, arg: str) -> None:
    parsed = parse_text(reply)
    assert parsed.failure is None
    assert parsed.finish is None
    assert [(a.tool, a.input) for a in parsed.actions] == [(tool, arg)]
    assert parsed.warnings == []


FINALS = {
    "Final Answer": ("Thought: I know it\nFinal Answer: 42", "42"),
    "FINAL_ANSWER": ("FINAL_ANSWER: 42", "42"),
    "final answer lower case": ("final answer: 42", "42"),
    "Action: Finish[...]": ("Thought: done\nAction: Finish[42]", "42"),
    "Action: Finish + Action Input": ("Action: Finish\nAction Input: 42", "42"),
    "Action: final_answer[...]": ("Action: final_answer[42]", "42"),
    "bold": ("**Final Answer:** 42", "42"),
    "bold, colon outside": ("**Final Answer**: 42", "42"),
    "fenced": ("```\nFinal Answer: 42\n```", "42"),
    "crlf": ("Thought: done\r\nFinal Answer: 42\r\n", "42"),
    "fullwidth colon": ("Final Answer\uff1a 42", "42"),
    "multi-line answer": ("Final Answer: first\nsecond", "first\nsecond"),
}


@pytest.mark.parametrize("reply,answer", FINALS.values(), ids=list(FINALS))
def test_every_dialect_yields_the_final_answer(reply: str, answer: str) -> None:
    parsed = parse_text(reply)
    assert parsed.failure is None
    assert parsed.actions == []
    assert parsed.finish is not None and parsed.finish.answer == answer


# What the ReAct parsers of LangChain, LangChain.js, CrewAI and LlamaIndex accept, as
# (reply, tool, input) for an action or (reply, None, answer) for a final answer.
PEER_REPLIES = {
    # a JSON blob action, fenced or bare; "Final Answer" as its action is the answer
    "json blob, fenced": (('Thought: look it up\n```json\n{\n  "action": "search",\n'
                           '  "action_input": "weather in SF"\n}\n```'), "search", "weather in SF"),
    "json blob, plain fence": ('```\n{"action": "search", "action_input": "cats"}\n```',
                               "search", "cats"),
    "json blob, bare": ('{"action": "search", "action_input": "cats"}', "search", "cats"),
    "json blob, object input": ('{"action": "add", "action_input": {"a": 1, "b": 2}}',
                                "add", {"a": 1, "b": 2}),
    "json blob, no input": ('{"action": "clock"}', "clock", {}),
    "json blob, under an Action label": (
        'Thought: x\nAction:\n```json\n{"action": "search", "action_input": "cats"}\n```',
        "search", "cats"),
    "json blob, chatter after it": (('{"action": "search", "action_input": "cats"}\n'
                                     "I will wait for the result."), "search", "cats"),
    "json blob, input key first": ('{"action_input": "cats", "action": "search"}',
                                   "search", "cats"),
    "json blob, single quotes": ("{'action': 'add', 'action_input': {'a': 1, 'b': 2,},}",
                                 "add", {"a": 1, "b": 2}),
    "json blob, python literals": ("{'action': 'flag', 'action_input': {'on': True, 'x': None}}",
                                   "flag", {"on": True, "x": None}),
    "json blob, final answer": ('```json\n{"action": "Final Answer", "action_input": "4"}\n```',
                                None, "4"),
    "json blob, final answer object": ('{"action": "Final Answer", "action_input": {"x": 1}}',
                                       None, '{"x": 1}'),
    # a bare Answer: label (LlamaIndex)
    "bare Answer": ("Thought: I can answer without any more tools.\nAnswer: 2", None, "2"),
    "bare Answer, multi-line": ("Thought: done\nAnswer: Here is the answer:\n\nsecond line.",
                                None, "Here is the answer:\n\nsecond line."),
    # a stop sequence cut half-way is no part of the input or answer
    "cut stop: Obs": ("Action: search\nAction Input: cats\nObs", "search", "cats"),
    "cut stop: Observ": ("Action: search\nAction Input: cats\nObserv", "search", "cats"),
    "cut stop: Observation": ("Action: search\nAction Input: cats\nObservation", "search",
                              "cats"),
    "cut stop: bare Observation:": ("Action: search\nAction Input: cats\nObservation:",
                                    "search", "cats"),
    "cut stop: Ques": ("Action: search\nAction Input: cats\nQues", "search", "cats"),
    "cut stop after a final answer": ("Final Answer: 42\nObs", None, "42"),
    # markers and quotes that belong to the input stay
    "trailing star": ("Action: search\nAction Input: what is 2 * 3 * 4? @$%^&*", "search",
                      "what is 2 * 3 * 4? @$%^&*"),
    "trailing double star": ("Action: grep\nAction Input: TODO**", "grep", "TODO**"),
    "trailing underscore": ("Action: search\nAction Input: my_var_", "search", "my_var_"),
    "leading star": ("Action: files\nAction Input: *.py", "files", "*.py"),
    "dunder": ("Action: search\nAction Input: __init__", "search", "__init__"),
    "bracketed dunder": ("Action: search[__init__]", "search", "__init__"),
    "trailing quote": ('Action: search\nAction Input: the word "cat"', "search",
                       'the word "cat"'),
    "trailing apostrophe": ("Action: search\nAction Input: the Joneses'", "search",
                            "the Joneses'"),
    "leading apostrophe": ("Action: search\nAction Input: 'tis the season", "search",
                           "'tis the season"),
    "two quoted strings": ('Action: search\nAction Input: "cats" and "dogs"', "search",
                           '"cats" and "dogs"'),
    "final answer ending in a star": ("Final Answer: the grade is A*", None, "the grade is A*"),
    "final answer in bold stays bold": ("Final Answer: **42**", None, "**42**"),
    "final answer with a trailing quote": ('Final Answer: He said "yes"', None,
                                           'He said "yes"'),
    # markers that are balanced are markdown, and go
    "bold around the whole line": ("**Action: search[cats]**", "search", "cats"),
    "bold around a final answer line": ("**Final Answer: 42**", None, "42"),
    "bold tool name": ("Action: **search**\nAction Input: cats", "search", "cats"),
    "bold label, input bold too": ("**Action:** search\n**Action Input:** __init__", "search",
                                   "__init__"),
    "quoted input": ('Action: search\nAction Input: "temperature in SF"', "search",
                     "temperature in SF"),
    "quoted input with inner quotes": ("Action: search\nAction Input: \"what's it in 'SF'?\"",
                                       "search", "what's it in 'SF'?"),
    "quoted brackets": ('Action: search\nAction Input: "[what is it in SF?]"', "search",
                        "[what is it in SF?]"),
    "backticked input": ("Action: shell\nAction Input: `ls -la`", "shell", "ls -la"),
    "single-quoted input": ("Action: search\nAction Input: 'cats'", "search", "cats"),
    "one unbalanced leading quote": ('Action: search\nAction Input: "what is it in SF?',
                                     "search", "what is it in SF?"),
    # brackets of other kinds are the input's own
    "curly braces": ("Action: search\nAction Input: {temperature in SF}", "search",
                     "{temperature in SF}"),
    "parentheses": ("Action: search\nAction Input: (temperature in SF)", "search",
                    "(temperature in SF)"),
    "angle brackets": ("Action: search\nAction Input: <temperature in SF>", "search",
                       "<temperature in SF>"),
    "escaped newline kept": ("Action: search\nAction Input: temperature in SF? \\n", "search",
                             "temperature in SF? \\n"),
    # a tool name with a description, or with its arguments in a call
    "name with a description": ('Action: add (add two numbers)\nAction Input: {"a": 1, "b": 2}',
                                "add", '{"a": 1, "b": 2}'),
    "name with a description, no space": ('Action: add(adds numbers)\nAction Input: {"a": 1}',
                                          "add", '{"a": 1}'),
    "call with json": ('Action: add({"a": 1, "b": 2})', "add", '{"a": 1, "b": 2}'),
    "call with json, space": ('Action: add ({"a": 1, "b": 2})', "add", '{"a": 1, "b": 2}'),
    "call with text": ("Action: search(cats)", "search", "cats"),
    "call with a quoted string": ('Action: search("cats")', "search", "cats"),
    "input wrapped in a call": ('Action: add\nAction Input: add({"a": 1, "b": 2})', "add",
                                '{"a": 1, "b": 2}'),
    # layouts from the peers' suites
    "name on the next line": ("Action:\nTerminal\n\nAction Input:\nls -l ~/.bashrc.d/",
                              "Terminal", "ls -l ~/.bashrc.d/"),
    "indented": ("I can use the `foo` tool.\n    Action: foo\n    Action Input: bar", "foo",
                 "bar"),
    "blank lines between": ('Thought: a tool.\n\nAction: add\n\nAction Input: {"a": 1, "b": 1}',
                            "add", '{"a": 1, "b": 1}'),
    "trailing space after the name": ("Thought: x\nAction: Search \nAction Input: NBA", "Search",
                                      "NBA"),
    "chatter under the name": ("Action: search\nusing the web\nAction Input: cats", "search",
                               "cats"),
    "multi-line input": ("Action: search\nAction Input: what is\nthe temperature in SF?",
                         "search", "what is\nthe temperature in SF?"),
    "final answer on the next line": ("Thought: I can now answer\nFinal Answer:\n1994", None,
                                      "1994"),
}


@pytest.mark.parametrize("reply,tool,expected", PEER_REPLIES.values(), ids=list(PEER_REPLIES))
def test_what_every_peer_parser_accepts(reply: str, tool: str | None, expected: object) -> None:
    parsed = parse_text(reply)
    assert parsed.failure is None, parsed.failure
    assert parsed.warnings == []
    if tool is None:
        assert parsed.actions == []
        assert parsed.finish is not None and parsed.finish.answer == expected
    else:
        assert parsed.finish is None
        assert [(a.tool, a.input) for a in parsed.actions] == [(tool, expected)]


def test_a_json_blob_and_a_final_answer_follow_the_documented_rule() -> None:
    parsed = parse_text('{"action": "search", "action_input": "cats"}\nFinal Answer: 5')
    assert [(a.tool, a.input) for a in parsed.actions] == [("search", "cats")]
    assert parsed.finish is None
    assert any("both an action and a final answer" in w for w in parsed.warnings)


def test_an_observation_invented_after_a_json_blob_is_cut() -> None:
    parsed = parse_text('{"action": "search", "action_input": "cats"}\nObservation: 999\n'
                        '{"action": "Final Answer", "action_input": "999"}')
    assert [(a.tool, a.input) for a in parsed.actions] == [("search", "cats")]
    assert parsed.finish is None and "999" not in parsed.raw
    assert parsed.warnings


def test_a_json_blob_is_not_the_thought() -> None:
    parsed = parse_text('Thought: look it up\n```json\n{"action": "search", "action_input": '
                        '"cats"}\n```')
    assert parsed.thought == "look it up"


@pytest.mark.parametrize("reply,answer", [
    ("Final Answer: Q: is it safe?\nAnswer: yes", "Q: is it safe?\nAnswer: yes"),
    ("Answer: Q: is it safe?\nAnswer: yes", "Q: is it safe?\nAnswer: yes"),
])
def test_an_answer_line_inside_a_final_answer_is_its_text(reply: str, answer: str) -> None:
    parsed = parse_text(reply)
    assert parsed.finish is not None and parsed.finish.answer == answer


def test_an_input_is_unwrapped_from_its_own_tool_name_only() -> None:
    parsed = parse_text("Action: search\nAction Input: lookup(cats)")
    assert [(a.tool, a.input) for a in parsed.actions] == [("search", "lookup(cats)")]
    parsed = parse_text("Action: search\nAction Input: search (cats and dogs)")
    assert [(a.tool, a.input) for a in parsed.actions] == [("search", "search (cats and dogs)")]


def test_a_name_with_a_description_and_no_input_asks_for_one() -> None:
    parsed = parse_text("Action: add (add two numbers)")
    assert parsed.actions == []
    assert parsed.failure is not None and "add[input]" in parsed.failure


def test_json_in_a_final_answer_is_not_taken_for_an_action() -> None:
    parsed = parse_text('Final Answer: {"action": "search", "action_input": "cats"}')
    assert parsed.actions == []
    assert parsed.finish is not None
    assert parsed.finish.answer == '{"action": "search", "action_input": "cats"}'


def test_thought_is_kept_and_raw_is_labelled() -> None:
    # The prompt ends with "Thought:", so a reply usually continues it without the label.
    parsed = parse_text(" I should add them.\nAction: calculator[2+2]")
    assert parsed.thought == "I should add them."
    assert parsed.raw.startswith("Thought: I should add them.")


def test_action_and_final_answer_in_one_reply_runs_the_action_with_a_warning() -> None:
    parsed = parse_text("Thought: x\nAction: calculator[2+2]\nFinal Answer: 5")
    assert [a.tool for a in parsed.actions] == ["calculator"]
    assert parsed.finish is None
    assert any("both an action and a final answer" in w for w in parsed.warnings)


def test_final_answer_before_the_action_follows_the_same_rule() -> None:
    parsed = parse_text("Final Answer: 5\nAction: calculator[2+2]")
    assert [a.tool for a in parsed.actions] == ["calculator"]
    assert parsed.finish is None and parsed.warnings


@pytest.mark.parametrize("label", ["Observation:", "observation:", "**Observation:**",
                                   "OBSERVATION\uff1a", "Question:"])
def test_an_invented_observation_and_everything_after_it_is_cut(label: str) -> None:
    reply = (f"Thought: x\nAction: calculator[2+2]\n{label} 999\n"
             f"Thought: I now know\nFinal Answer: 999")
    parsed = parse_text(reply)
    assert [(a.tool, a.input) for a in parsed.actions] == [("calculator", "2+2")]
    assert parsed.finish is None
    assert "999" not in parsed.raw
    assert parsed.raw.endswith("Action: calculator[2+2]")
    assert parsed.warnings


def test_an_observation_on_the_first_line_is_not_trusted_either() -> None:
    parsed = parse_text("Observation: the answer is 999\nFinal Answer: 999")
    assert parsed.finish is None
    assert parsed.failure is not None
    assert "999" not in parsed.raw


def test_a_restated_question_on_the_first_line_is_tolerated() -> None:
    parsed = parse_text("Question: what is 2+2?\nThought: add\nAction: calculator[2+2]")
    assert [a.tool for a in parsed.actions] == ["calculator"]
    assert not parsed.warnings


def test_several_actions_keep_the_first_and_warn() -> None:
    parsed = parse_text("Action: calculator[1+1]\nAction: search[cats]\nAction: calculator[3]")
    assert [(a.tool, a.input) for a in parsed.actions] == [("calculator", "1+1")]
    assert any("3 actions" in w and "calculator" in w for w in parsed.warnings)


def test_several_actions_in_the_action_input_dialect() -> None:
    parsed = parse_text("Action: search\nAction Input: cats\nAction: calculator\nAction Input: 2")
    assert [(a.tool, a.input) for a in parsed.actions] == [("search", "cats")]
    assert parsed.warnings


@pytest.mark.parametrize("reply", ["I think the answer is 4.", "", "   \n\n",
                                   "Thought: hmm, let me think about it"])
def test_no_action_and_no_final_answer_is_a_failure_with_a_format_hint(reply: str) -> None:
    parsed = parse_text(reply)
    assert parsed.actions == [] and parsed.finish is None
    assert parsed.failure is not None and FORMAT_HINT in parsed.failure


def test_an_action_without_input_says_how_to_give_one() -> None:
    parsed = parse_text("Thought: x\nAction: calculator")
    assert parsed.actions == []
    assert parsed.failure is not None and "calculator[input]" in parsed.failure


@pytest.mark.parametrize("reply", [
    "Thought: add\nAction: calculator[2+2]",           # looks complete, but was cut
    "Thought: add\nAction: calculator[2+",
    'Action: calculator\nAction Input: {"expression": "2',
    "Thought: done\nFinal Answer: the answer is",
])
def test_a_reply_cut_at_the_token_limit_runs_nothing(reply: str) -> None:
    parsed = parse_text(reply, finish_reason="length")
    assert parsed.actions == [] and parsed.finish is None
    assert parsed.failure is not None and "cut off" in parsed.failure


def test_native_tool_calls_become_actions_with_their_ids() -> None:
    calls = [ToolCall("c1", "calculator", '{"expression": "2+2"}'),
             ToolCall("c2", "search", '{"query": "cats"}')]
    parsed = parse_tool_calls("thinking", calls, "tool_calls")
    assert parsed.actions == [Action("calculator", {"expression": "2+2"}, "c1"),
                              Action("search", {"query": "cats"}, "c2")]
    assert parsed.thought == "thinking" and parsed.finish is None


@pytest.mark.parametrize("arguments", [
    '{"expression": "2+2',                        # unterminated
    "not json at all",
    "{'expression': __import__('os').getcwd()}",  # a call: never evaluated
    "{'expression': '2' + '2'}",                  # an operator
    "{'expression': b'2+2'}",                     # bytes are no JSON value
    "{'expression': (2, 2)}",                     # nor is a tuple
    "{2: 'x'}",                                   # keys are strings
    "{'xs': ['a' 'b']}",                          # joined strings, or a missed comma?
    "{'a': 1, **{'b': 2}}",                       # unpacking
    "{'a': [*'xy']}",
    "{'a': f'{1}'}",                              # an f-string
    "{'a': nan}",                                 # a name
    "{'expression': 1e999}",                      # nor infinity
    "'2+2'",                                      # near-JSON only for an object or array
])
def test_native_calls_with_broken_json_keep_the_text_marked_as_raw(arguments: str) -> None:
    parsed = parse_tool_calls("", [ToolCall("c1", "calculator", arguments)], "tool_calls")
    (action,) = parsed.actions
    assert isinstance(action.input, RawArguments) and action.input == arguments


# Unambiguous near-JSON, as local models write it, decoded by a literal parser (never eval).
NEAR_JSON = {
    "single quotes": ("{'expression': '2+2'}", {"expression": "2+2"}),
    "trailing comma": ('{"expression": "2+2",}', {"expression": "2+2"}),
    "trailing comma in a list": ('{"xs": [1, 2,],}', {"xs": [1, 2]}),
    "python literals": ("{'on': True, 'off': False, 'none': None}",
                        {"on": True, "off": False, "none": None}),
    "json literals among single quotes": ("{'on': true, 'off': false, 'none': null}",
                                          {"on": True, "off": False, "none": None}),
    "mixed quotes and negative numbers": ("{'a': \"it's\", \"b\": -1.5}", {"a": "it's", "b": -1.5}),
}


@pytest.mark.parametrize("arguments,expected", NEAR_JSON.values(), ids=list(NEAR_JSON))
def test_native_calls_in_near_json_are_decoded_safely(arguments: str, expected: object) -> None:
    parsed = parse_tool_calls("", [ToolCall("c1", "calculator", arguments)], "tool_calls")
    assert parsed.failure is None
    assert parsed.actions == [Action("calculator", expected, "c1")]


DEEP = {
    "objects": '{"a":' * 500 + "1" + "}" * 500,
    "arrays": "[" * 500 + "]" * 500,
    "unclosed": "[" * 5000,
    "mixed, single quotes": "{'a': [" * 300 + "1" + "]}" * 300,
}


@pytest.mark.parametrize("arguments", DEEP.values(), ids=list(DEEP))
def test_native_arguments_nested_too_deep_run_nothing_and_say_why(arguments: str) -> None:
    calls = [ToolCall("c1", "calculator", '{"expression": "1+1"}'),
             ToolCall("c2", "calculator", arguments)]
    parsed = parse_tool_calls("", calls, "tool_calls")
    assert parsed.actions == []
    assert parsed.failure is not None and "nested" in parsed.failure
    assert str(MAX_DEPTH) in parsed.failure


def test_nesting_up_to_the_bound_is_accepted_and_brackets_in_strings_do_not_count() -> None:
    deepest = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    in_text = '{"text": "' + "[{" * 1000 + '"}'
    parsed = parse_tool_calls("", [ToolCall("c1", "t", '{"x": ' + deepest[1:-1] + "}"),
                                   ToolCall("c2", "t", in_text)], "tool_calls")
    assert parsed.failure is None
    assert parsed.actions[1].input == {"text": "[{" * 1000}


def test_a_json_blob_nested_too_deep_is_refused_not_recursed() -> None:
    parsed = parse_text('{"action": "calculator", "action_input": ' + "[" * 500 + "]" * 500 + "}")
    assert parsed.actions == [] and parsed.finish is None
    assert parsed.failure is not None and "nested" in parsed.failure


def test_json_blob_from_the_model_is_never_evaluated(tmp_path) -> None:
    sentinel = tmp_path / "pwned"
    touch = f"__import__('pathlib').Path({str(sentinel)!r}).touch()"
    parsed = parse_text("{'action': 'calculator', 'action_input': " + touch + "}")
    assert not sentinel.exists()
    assert parsed.actions == [] and parsed.failure is not None


def test_native_reply_without_calls_is_the_final_answer() -> None:
    parsed = parse_tool_calls("It is 4.", [], "stop")
    assert parsed.finish is not None and parsed.finish.answer == "It is 4."
    assert parsed.actions == []


def test_native_calls_cut_at_the_token_limit_run_nothing() -> None:
    parsed = parse_tool_calls("", [ToolCall("c1", "calculator", '{"expression": "2+')], "length")
    assert parsed.actions == [] and parsed.failure is not None


@pytest.mark.parametrize("arguments", ['{"expression": ' + "9" * 5000 + "}",
                                       "{'expression': " + "9" * 5000 + "}"])
def test_a_number_past_pythons_digit_limit_is_broken_arguments_not_a_crash(arguments: str
                                                                            ) -> None:
    # CPython refuses integers over 4,300 digits with a bare ValueError
    native = parse_tool_calls("", [ToolCall("c1", "calculator", arguments)], "tool_calls")
    assert isinstance(native.actions[0].input, RawArguments)
    blob = parse_text('{"action": "calculator", "action_input": ' + arguments + "}")
    assert blob.actions == [] and blob.failure
