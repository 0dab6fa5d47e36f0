"""Turning model replies into actions or a final answer: every text ReAct dialect the
parser documents, the rules for odd replies, and native tool calls."""

from __future__ import annotations

import pytest

from runner.models import ToolCall
from runner.parsing import FORMAT_HINT, Action, RawArguments, parse_text, parse_tool_calls

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


@pytest.mark.parametrize("arguments", ['{"expression": "2+2', "{'expression': '2+2'}",
                                       '{"expression": "2+2",}', "not json at all"])
def test_native_calls_with_broken_json_keep_the_text_marked_as_raw(arguments: str) -> None:
    parsed = parse_tool_calls("", [ToolCall("c1", "calculator", arguments)], "tool_calls")
    (action,) = parsed.actions
    assert isinstance(action.input, RawArguments) and action.input == arguments


def test_native_reply_without_calls_is_the_final_answer() -> None:
    parsed = parse_tool_calls("It is 4.", [], "stop")
    assert parsed.finish is not None and parsed.finish.answer == "It is 4."
    assert parsed.actions == []


def test_native_calls_cut_at_the_token_limit_run_nothing() -> None:
    parsed = parse_tool_calls("", [ToolCall("c1", "calculator", '{"expression": "2+')], "length")
    assert parsed.actions == [] and parsed.failure is not None
