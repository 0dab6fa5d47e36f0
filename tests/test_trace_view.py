"""`runner trace view`: one self-contained HTML page of a run, opened in a real headless
Chromium (Debian's /usr/bin/chromium) and checked for what a person would see."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

import runner
from conftest import run_cli, tools_plugin
from runner.tools import tool
from runner.trace.html import render_page
from runner.trace.reader import build_tree, read_trace

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
NOTES = Path("/work/notes")
EVIL = "</script><b>x</b><!-- <script>alert(1)</script>"


@tool
async def nap(seconds: float) -> str:
    """Sleeps a while."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@tool
def echo(text: str) -> str:
    """Says the text back."""
    return text


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: the trace viewer's tests open the page in Debian's "
                    "Chromium, which ./install.sh installs (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """A browser tab that records every request and every console error."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.set_default_timeout(5000)
        self.tab = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.tab.on("request", lambda r: self.requests.append(r.url))
        self.tab.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.tab.on("pageerror", lambda e: self.errors.append(str(e)))
        self.tab.on("dialog", lambda d: (self.errors.append(f"dialog: {d.message}"), d.dismiss()))

    def open(self, html: Path) -> Any:
        self.tab.goto(html.as_uri())
        self.tab.wait_for_selector("#header h1")
        return self.tab

    def check_offline(self, html: Path) -> None:
        """Nothing but the page itself was loaded, nothing was refused or failed, and no script
    from the trace's text ran (it would alert)."""
        assert self.requests and all(u == html.as_uri() or u.startswith("data:")
                                     for u in self.requests), self.requests
        assert self.errors == []


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    p = Page(browser)
    yield p
    p.context.close()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder to run in: checkpoints and traces stay in tmp_path."""
    (tmp_path / "pyproject.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(project: Path, scripted: list[str], spec: str, question: str = "do it",
        more: tuple[str, ...] = ()) -> Any:
    """Run a spec in-process (so inline tools are there) with its trace in project/traces:
    on a thread of its own, since Playwright's sync API keeps an event loop on this one."""
    path = project / "agent.yaml"
    path.write_text("version: 1\nname: boss\nmemory: {backend: none}\n" + spec)
    overrides = [*scripted, f"trace.path={project / 'traces'}", *more]
    with tools_plugin(nap, echo), ThreadPoolExecutor(1) as pool:
        return pool.submit(runner.run_agent, path, question, overrides=overrides).result()


def view(project: Path, run_id: str) -> Path:
    """`runner trace view RUN_ID` as a user types it (a prefix of the id)."""
    out = project / "page.html"
    proc = run_cli("trace", "view", run_id[:6], "--dir", str(project / "traces"), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    return out


def shoot(tab: Any, project: Path, name: str, share: bool = False) -> Path:
    """A full-page screenshot in tmp_path (`share`: and a copy in /work/notes for the lead)."""
    shot = project / name
    tab.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if share and NOTES.is_dir():
        shutil.copy(shot, NOTES / name)
    return shot


def box(locator: Any) -> dict[str, float]:
    b = locator.bounding_box()
    assert b is not None, "not rendered"
    return b


# -------------------------------------------------------------------------------- pages


def test_a_run_with_parallel_tools_a_retry_and_a_sub_agent(page: Page, project: Path, server,
                                                          scripted: list[str]) -> None:
    (project / "helper.yaml").write_text(
        "version: 1\nname: helper\ndescription: Helps.\nmemory: {backend: none}\n"
        f"loop: {{style: react}}\nmodel: {{id: openai/scripted, api_base: '{server.url}'}}\n")
    server.script(
        {"status": 500, "body": "upstream fell over"},
        {"content": "Two things at once.", "tool_calls": [
            {"name": "nap", "arguments": {"seconds": 0.3}},
            {"name": "echo", "arguments": {"text": EVIL}}]},
        {"content": "", "tool_calls": [{"name": "helper", "arguments": {"input": "sub q"}}]},
        "Thought: easy\nFinal Answer: sub done",
        "All done: 42")
    result = run(project, scripted,
                 "loop: {style: tools}\ntools: [nap, echo, agent: helper.yaml]\n",
                 more=("model.retries=1", "model.backoff_s=0.01"))
    assert result.status == "finished", result.error
    html = view(project, result.run_id)
    source = html.read_text()
    # the page loads nothing: no URL outside the trace's own data, one script that runs
    outside = re.sub(r'<script type="application/json" id="trace-data">.*?</script>', "",
                     source, flags=re.S)
    assert not re.search(r"https?://", outside)
    assert source.count("</script>") == 2 and source.count("<!--") == 0
    assert "default-src 'none'" in source

    tab = page.open(html)
    page.check_offline(html)
    header = tab.locator("#header")
    assert header.locator("h1").inner_text() == "boss"
    status = header.locator(".status")
    assert status.inner_text() == "finished" and "ok" in status.get_attribute("class")
    assert tab.get_by_text("All done: 42", exact=True).first.is_visible()
    assert "openai/scripted" in header.inner_text() and "do it" in header.inner_text()

    # the timeline: one bar per model call (the sub-agent's too) and per tool call
    models, tools = tab.locator(".bar[data-kind=model]"), tab.locator(".bar[data-kind=tool]")
    assert (models.count(), tools.count()) == (4, 3)
    assert tab.locator(".bar.model .seg.failed").count() == 1  # the retried attempt
    assert "↻1" in tab.locator(".tl-row.model").first.inner_text()
    # bars to scale: each bar's share of the track is its share of the run's time
    events = read_trace(next((project / "traces").glob("*.jsonl")))
    tree = build_tree(events)
    t0 = tree["start"]
    span = max(e["t"] for e in events) - t0
    step1 = next(item for item in tree["items"] if item["type"] == "step")
    nap_call, echo_call = step1["tools"]
    nap_bar, echo_bar = tools.nth(0), tools.nth(1)
    track = box(tab.locator(".tl-body .tl-track").first)
    for bar, part in [(nap_bar, nap_call), (echo_bar, echo_call), (models.nth(0), step1["model"])]:
        b, (start, end) = box(bar), (part["start"], part["end"])
        shortest = 2 / track["width"]  # a bar is at least 2 px wide, to be seen and clicked
        assert abs(b["width"] / track["width"] - max((end - start) / span, shortest)) < 0.01
        assert abs((b["x"] - track["x"]) / track["width"] - (start - t0) / span) < 0.01
    nap_box, echo_box = box(nap_bar), box(echo_bar)
    assert nap_box["width"] > 5 * echo_box["width"]  # 0.3 s against a few ms
    # parallel calls overlap in time: echo runs while nap sleeps
    assert nap_box["x"] - 2 <= echo_box["x"] <= nap_box["x"] + nap_box["width"]
    # the sub-agent's rows are indented under the tool call that started it
    labels = tab.locator(".tl-body .tl-name")
    names = [labels.nth(i).inner_text() for i in range(labels.count())]
    assert names == ["steps 1–2 · model", "nap", "echo", "step 3 · model", "helper (agent)",
                     "↳ helper · step 1 · model", "step 4 · model"]
    assert box(labels.nth(5))["x"] > box(labels.nth(3))["x"] + 10

    # a step opens to the exact prompt and the raw reply, which were not shown before
    first = tab.locator("#steps > details.step").first
    system = step1["model"]["messages"][0]["content"]
    assert tab.get_by_text(system, exact=True).count() == 0
    first.locator("summary").click()
    expect(first.locator(".step-body")).to_be_visible()
    prompt = first.locator(".prompt pre")
    assert [prompt.nth(i).inner_text() for i in range(prompt.count())] == [system, "do it"]
    assert all(prompt.nth(i).is_visible() for i in range(prompt.count()))
    raw = first.locator(".output pre.raw")
    assert raw.first.inner_text() == "Two things at once." and raw.first.is_visible()
    assert raw.nth(1).inner_text() == json.dumps({"seconds": 0.3})  # the raw arguments
    retry = first.get_by_text("openai/scripted: HTTP 500: upstream fell over", exact=True)
    assert retry.is_visible()
    assert first.get_by_text("Tool schemas sent").is_visible()
    # a tool output that looks like HTML is shown as the text it is
    evil = first.locator(".call pre", has_text="</script>").last
    assert evil.inner_text() == EVIL and evil.is_visible()
    assert tab.locator("b", has_text="x").count() == 0
    shoot(tab, project, "viewer.png", share=True)  # the header, the timeline and this step, open

    # a bar opens its step: the sub-agent's model call opens the parent step, then its own
    models.nth(2).click()
    sub_step = tab.locator(".subrun details.step")
    assert sub_step.get_attribute("open") is not None
    sub_prompt = sub_step.locator(".prompt pre").first
    assert "Question: sub q" in sub_prompt.inner_text() and sub_prompt.is_visible()
    assert sub_step.locator(".output pre.raw").first.inner_text() == \
        "Thought: easy\nFinal Answer: sub done"
    models.nth(3).click()  # the last model call: its step opens and is scrolled into view
    last = tab.locator("#steps > details.step").nth(2)
    assert last.get_attribute("open") is not None
    answer = last.locator(".output pre.raw").first
    assert answer.inner_text() == "All done: 42" and answer.is_visible()
    top = tab.evaluate("document.querySelectorAll('#steps > details.step')[2]"
                       ".getBoundingClientRect().top")
    assert 0 <= top < 900
    page.check_offline(html)


def test_a_failed_run_shows_its_error(page: Page, project: Path, server,
                                      scripted: list[str]) -> None:
    server.script("Thought: echo first\nAction: echo[hello]",
                  {"status": 401, "body": "invalid api key"})
    result = run(project, scripted, "loop: {style: react}\ntools: [echo]\n",
                 more=("model.retries=0",))
    assert result.status == "model_auth_error"
    html = view(project, result.run_id)
    tab = page.open(html)
    status = tab.locator("#header .status")
    assert status.inner_text() == "model_auth_error" and "bad" in status.get_attribute("class")
    error = tab.locator("#header .box.error pre")
    assert "401" in error.inner_text() and error.is_visible()
    # the call that failed has a bar to the end of the run, marked as never answered
    assert tab.locator(".bar[data-kind=model]").count() == 2
    assert tab.locator(".bar.model.open").count() == 1
    last = tab.locator("details.step").nth(1)
    last.locator("summary").click()
    expect(last.locator(".output .label")).to_have_text("The call failed and the run ended")
    expect(last.locator(".output pre.err")).to_have_text(result.error)
    expect(last.locator(".output pre.err")).to_be_visible()
    page.check_offline(html)
    shoot(tab, project, "viewer-failed.png")


def test_an_unfinished_run_killed_in_a_sub_agent(page: Page, project: Path, server) -> None:
    (project / "helper.yaml").write_text(
        "version: 1\nname: helper\ndescription: Helps.\nmemory: {backend: none}\n"
        f"loop: {{style: react}}\nmodel: {{id: openai/scripted, api_base: '{server.url}'}}\n")
    (project / "boss.yaml").write_text(
        "version: 1\nname: boss\nmemory: {backend: none}\nloop: {style: react}\n"
        "tools:\n  - agent: helper.yaml\n")
    server.script("Thought: ask\nAction: helper[what now]", {"hang": True})
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", "boss.yaml", "q", "--set",
         "model.id=openai/scripted", "--set", f"model.api_base={server.url}", "--set",
         f"trace.path={project / 'traces'}"], cwd=project,
        env={**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(server.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(server.requests) == 2  # the sub-agent's call is hanging
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (trace,) = (project / "traces").glob("*.jsonl")
    html = view(project, trace.stem)
    tab = page.open(html)
    page.check_offline(html)
    assert tab.locator("#header .status").inner_text() == "unfinished"
    assert tab.locator("#header .box.warn").is_visible()
    # the tool call and the sub-agent's model call never ended: open bars, still nested
    assert tab.locator(".bar.tool.sub.open").count() == 1
    assert tab.locator(".bar.model.open").count() == 1
    assert "↳ helper" in tab.locator(".tl-row.model.nested").inner_text()
    tab.locator(".bar.model.open").click()
    sub = tab.locator(".subrun details.step")
    assert sub.get_attribute("open") is not None
    # a call's messages are stored when it starts: the hung call's prompt is there
    expect(sub.locator(".prompt")).to_contain_text("Question: what now")
    expect(tab.locator(".subrun > pre").first).to_have_text("what now")  # the sub-agent's input
    assert tab.locator(".call .badge", has_text="no result").is_visible()


def test_a_very_long_prompt_scrolls_inside_its_box(page: Page, project: Path, server,
                                                   scripted: list[str]) -> None:
    question = "".join(f"line {i}: " + "lorem ipsum " * 8 + "\n" for i in range(3000))
    question += "x" * 20_000 + " END-OF-QUESTION"  # one unbreakable line too
    server.script(*[{"content": "", "tool_calls": [{"name": "echo", "arguments": {"text": str(i)}}]}
                    for i in range(4)], "ok")
    result = run(project, scripted, "loop: {style: tools}\ntools: [echo]\n", question)
    assert result.status == "finished"
    html = view(project, result.run_id)
    # five model calls each sent the whole question; the page holds it twice: once as the
    # run's input, once as the message every call refers to
    assert 2 * len(question) < html.stat().st_size < 3 * len(question)
    tab = page.open(html)
    step = tab.locator("details.step").nth(4)
    step.locator("summary").click()
    expect(step.locator(".step-body")).to_be_visible()
    user = step.locator(".msg.role-user pre")
    assert user.inner_text() == question
    assert user.is_visible()
    height, scroll_height = user.evaluate("e => [e.clientHeight, e.scrollHeight]")
    assert height < 600 < scroll_height  # the box scrolls, the page stays short
    assert tab.evaluate("document.documentElement.scrollWidth") <= 1280  # no sideways scroll
    messages = step.locator(".msg")
    assert messages.count() == 10 and step.locator(".msg.new").count() == 2  # the last call
    step.get_by_text("only the new messages").click()  # and its result are new
    expect(user).to_be_hidden()
    assert [m.is_visible() for m in messages.all()] == [False] * 8 + [True] * 2
    expect(step.locator(".prompt")).to_have_attribute("open", "")  # the label did not fold it
    page.check_offline(html)


def test_the_data_block_cannot_be_closed_from_inside(project: Path) -> None:
    events = [{"kind": "run_started", "run_id": "r1", "t": 1.0, "agent": "a<b>", "model": "m",
               "input": EVIL + " \u2028 <!-- -->"},
              {"kind": "run_ended", "run_id": "r1", "t": 2.0, "status": "finished",
               "answer": "</SCRIPT >", "error": None, "duration_s": 1.0}]
    html = render_page(build_tree(events))
    assert html.count("</script>") == 2 and "</SCRIPT" not in html and "<!--" not in html
    assert "<title>a&lt;b&gt; · finished · run r1</title>" in html
    data = re.search(r'id="trace-data">(.*?)</script>', html, re.S).group(1)
    run_tree = json.loads(data)["run"]
    assert run_tree["input"] == EVIL + " \u2028 <!-- -->" and run_tree["answer"] == "</SCRIPT >"


def test_view_writes_next_to_the_trace_by_default(project: Path) -> None:
    folder = project / "traces"
    folder.mkdir()
    (folder / "abc123.jsonl").write_text(json.dumps(
        {"kind": "run_started", "run_id": "abc123", "t": 1.0, "agent": "a", "model": "m",
         "input": "q"}) + "\n")
    proc = run_cli("trace", "view", "abc", "--dir", str(folder))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(folder / "abc123.html")
    assert "unfinished" in (folder / "abc123.html").read_text()
    proc = run_cli("trace", "view", "nope", "--dir", str(folder))
    assert proc.returncode != 0 and "no trace for run 'nope'" in proc.stderr



def test_an_mcp_tool_call_shows_the_progress_its_server_sent(page: Page, project: Path) -> None:
    faulty = Path(__file__).resolve().parent / "mcp_servers" / "faulty.py"
    (project / "agent.yaml").write_text(json.dumps({
        "version": 1, "name": "waiter", "memory": {"backend": "none"},
        "loop": {"style": "react"}, "trace": {"path": str(project / "traces")},
        "model": {"id": "fake/script", "options": {"replies": [
            "Thought: wait\nAction: f__slow[0.2]", "Final Answer: waited"]}},
        "tools": [{"mcp": {"name": "f", "command": sys.executable, "args": [str(faulty)]}}]}))
    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API keeps a loop on this thread
        result = pool.submit(runner.run_agent, project / "agent.yaml", "go").result()
    assert result.status == "finished", result.error
    tab = page.open(view(project, result.run_id))
    page.check_offline(project / "page.html")
    step = tab.locator("#steps > details.step").first
    step.locator("summary").click()
    expect(step.locator(".step-body")).to_be_visible()  # a step's body is built as it opens
    call = step.locator(".call").first
    expect(call.get_by_text("Progress (the last 10)")).to_be_visible()
    shown = call.locator("pre", has_text="step 9").inner_text()
    assert "9/10  step 9" in shown and "0/10  step 0" in shown


def test_a_pipeline_and_a_critics_reviews_show_in_order(page: Page, project: Path) -> None:
    """The pipeline's steps are its sub-agents' runs, one after the other; a reflection's
    reviews follow the critic's run with their verdicts (the critic's text stays literal)."""
    fake = "model: {{id: fake/script, options: {{replies: {replies}}}}}\nloop: {{style: react}}\n"
    (project / "critic.yaml").write_text(
        "name: critic\nkind: chain\ninputs: {draft: }\nprompt: {text: '{{ draft }}'}\n"
        + fake.format(replies='["- <b>no</b> unit", "APPROVE"]'))
    (project / "gen.yaml").write_text(
        "name: gen\nreflection: {critic: critic.yaml}\n"
        + fake.format(replies='["Final Answer: 40", "Final Answer: 40 km"]'))
    (project / "first.yaml").write_text(
        "name: first\n" + fake.format(replies='["Final Answer: facts"]'))
    (project / "pipe.yaml").write_text(
        "name: pipe\nkind: sequence\nsteps:\n  - agent: first.yaml\n  - agent: gen.yaml\n"
        f"trace: {{path: {project / 'traces'}}}\n")
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(runner.run_agent, project / "pipe.yaml", "go").result()
    assert result.status == "finished" and result.answer == "40 km"
    tab = page.open(view(project, result.run_id))
    heads = tab.locator(".subrun-head b")
    expect(heads).to_have_text(["first", "gen", "critic", "critic"])
    notes = tab.locator(".note")
    expect(notes).to_have_text(["review 1: not approved: <b>no</b> unit", "review 2: approved"])
    expect(tab.locator(".note.warn")).to_have_count(1)
    page.check_offline(project / "page.html")
