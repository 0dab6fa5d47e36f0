"""What a hostile model puts in its replies and a tool in its results leaves the process
defused: terminal control codes are shown, never obeyed, on stderr, on a terminal's stdout
and in `--json`; a secret used as a JSON key, a password inside a URL, a tool name or call
id from the model are masked in the trace, the HTML page, `--json`, `trace show` and the
OpenTelemetry spans. Real CLI subprocesses against the scripted OpenAI-wire server."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from otlp_receiver import OtlpReceiver

from runner import redact
from runner.redact import MASK, Redactor, env_secrets, redact_text

KEY = "sk-test-not-a-real-key"
SECRET = "tok-live-7f3a9c2e51d4"
"""The value of PROBE_SERVICE_TOKEN: a secret by its variable's name."""
DSN = "postgres://u:hunter2@h/db"

HOSTILE = ("\x1b]0;pwned\x07 \x1b]52;c;cGF5bG9hZA==\x07 \x1b[2J \x1b[8mhidden\x1b[0m "
           "\x9b31mred \u202eevil")
"""Sets the title, writes the clipboard (OSC 52), clears the screen, conceals text, a C1 CSI
and a right-to-left override."""
RAW = ("\x1b", "\x07", "\x9b", "\u202e")

DRIVER = f"""\
import sys
sys.path.insert(0, {str(ROOT)!r})
import runner
from runner.cli import main


@runner.tool
def echo(text: str) -> str:
    '''Returns its input, then a carriage return (as a progress bar would).'''
    return text + "\\r\\x1b[2K"


@runner.tool
def store(record: dict) -> dict:
    '''Stores a record and returns it.'''
    return record


class Tools:
    @runner.hookimpl
    def register_tools(self, register):
        register(echo)
        register(store)


runner.register_plugin(Tools())
main()
"""
"""`runner` with two more tools: the CLI's own code, a plugin registered."""


@pytest.fixture
def project(tmp_path: Path, server: Any) -> Path:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "cli.py").write_text(DRIVER)
    (tmp_path / "a.yaml").write_text(
        "version: 1\nname: a\nmemory: {backend: none}\nloop: {style: react}\n"
        f"model: {{id: openai/scripted, api_base: '{server.url}', retries: 0}}\n"
        "checkpoint: {enabled: false}\ntrace: {path: traces}\ntools: [echo, store]\n")
    return tmp_path


def cli(project: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PROBE_SERVICE_TOKEN": SECRET,
           **{k: "" for k in os.environ if k.startswith("OTEL_")}}
    return subprocess.run([sys.executable, "cli.py", *args], check=False, cwd=project, env=env,
                          capture_output=True, text=True, timeout=120, **kw)


def hostile_run(server: Any) -> None:
    server.script(f"Thought: {HOSTILE}\nAction: echo\nAction Input: {HOSTILE}",
                  f"Final Answer: {HOSTILE} done")


# --- item 4: terminal control codes --------------------------------------------------------


def test_printable_shows_controls_and_keeps_layout() -> None:
    assert redact.printable("a\tb\nc") == "a\tb\nc"  # tabs and newlines are layout
    assert redact.printable("\x1b[2K\rx\x07\x7f\x9b\u202e\u2066\u200f") == \
        "\\x1b[2K\\x0dx\\x07\\x7f\\x9b\\u202e\\u2066\\u200f"
    assert redact.printable("naïve — 猫 ✓") == "naïve — 猫 ✓"
    # the same characters as JSON escapes: the JSON still decodes to the exact text
    text = json.dumps({"k\u202e": HOSTILE + "\x7f"}, ensure_ascii=False)
    safe = redact.json_printable(text)
    assert not any(c in safe for c in RAW + ("\x7f",))
    assert json.loads(safe) == {"k\u202e": HOSTILE + "\x7f"}


def test_the_plain_printer_shows_control_codes_instead_of_obeying_them(
        project: Path, server: Any) -> None:
    hostile_run(server)
    proc = cli(project, "run", "a.yaml", "q", "--set", f"model.api_base={server.url}")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    for c in (*RAW, "\r"):  # thought, action, observation: none reach the terminal raw
        assert c not in err, (c, err)
    assert err.count("\\x1b]0;pwned\\x07") == 3  # thought, action, observation
    assert err.count("\\x1b]52;c;cGF5bG9hZA==\\x07") == 3
    assert "\\x1b[2J" in err and "\\x1b[8mhidden" in err and "\\x9b31mred" in err
    assert "\\u202eevil" in err and "\\x0d\\x1b[2K" in err
    # stdout is a pipe: the answer is the model's text, byte for byte (> answer.txt)
    assert proc.stdout == f"{HOSTILE} done\n"


def test_json_output_escapes_every_control_and_decodes_to_the_exact_text(
        project: Path, server: Any) -> None:
    hostile_run(server)
    proc = cli(project, "run", "a.yaml", "q", "--json")
    assert proc.returncode == 0, proc.stderr
    for c in (*RAW, "\r"):
        assert c not in proc.stdout
    result = json.loads(proc.stdout)
    assert result["answer"] == f"{HOSTILE} done"
    assert result["steps"][0]["observation"] == HOSTILE + "\r\x1b[2K"


def test_an_answer_on_a_terminal_is_shown_escaped(project: Path, server: Any) -> None:
    hostile_run(server)
    master, slave = pty.openpty()
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "cli.py", "run", "a.yaml", "q"], cwd=project,
                            env=env, stdout=slave, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    os.close(slave)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process closed its side
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    shown = seen.decode()
    assert not any(c in shown for c in RAW)
    assert shown.replace("\r\n", "\n") == redact.printable(f"{HOSTILE} done") + "\n"


# --- item 6: secrets as keys, passwords in URLs, names from the model ----------------------


def test_the_redactor_masks_keys_and_url_passwords() -> None:
    r = Redactor([SECRET])
    masked = r.value({SECRET: 1, "n": {f"x{SECRET}": [{SECRET: SECRET}]}, "dsn": DSN})
    assert SECRET not in json.dumps(masked) and "hunter2" not in json.dumps(masked)
    assert masked["dsn"] == f"postgres://u:{MASK}@h/db"
    assert masked[MASK] == 1 and masked["n"] == {f"x{MASK}": [{MASK: MASK}]}
    # two keys that mask alike are both kept
    assert len(r.value({f"a{SECRET}": 1, f"a{SECRET}{SECRET}": 2})) == 2
    assert redact_text(f"dsn redis://:s3cr3t-pw@cache:6379/0 and {DSN}", []) == \
        f"dsn redis://:{MASK}@cache:6379/0 and postgres://u:{MASK}@h/db"
    # URLs without a password stay as they are
    for url in ("https://example.com:8443/a@b", "https://user@example.com/x",
                "http://h:80/?to=a@b.c", "mailto:ann@example.com", "git@github.com:o/r.git"):
        assert redact_text(url, []) == url
    # a password inside a URL in any variable is a secret wherever it shows up alone
    assert "hunter2x" in env_secrets({"DATABASE_URL": "postgres://u:hunter2x@h/db"})


def test_secret_keys_urls_and_model_names_are_masked_everywhere(
        project: Path, server: Any) -> None:
    calls = [{"id": f"call-{SECRET}", "name": "store",
              "arguments": {"record": {SECRET: "value", "dsn": DSN}}},
             {"id": "call-2", "name": f"x{SECRET}", "arguments": {SECRET: 1}}]
    with OtlpReceiver() as rx:
        server.script({"tool_calls": calls}, "stored")
        proc = cli(project, "run", "a.yaml", "q", "--json", "--set", "loop.style=tools",
                   "--set", f"trace.otlp.endpoint={rx.url}",
                   "--set", "trace.otlp.capture_content=true")
        assert proc.returncode == 0, proc.stderr
        spans = rx.spans
    result = json.loads(proc.stdout)
    assert result["steps"][0]["input"] == {"record": {MASK: "value", "dsn": "postgres://u:***@h/db"}}
    # the run itself saw the real values
    assert SECRET in server.requests[1]["messages"][-2]["content"]
    assert "hunter2" in server.requests[1]["messages"][-2]["content"]

    (trace,) = (project / "traces").glob("*.jsonl")
    run_id = trace.stem
    shown = cli(project, "trace", "show", run_id, "--full", "--dir", "traces")
    page = cli(project, "trace", "view", run_id, "--dir", "traces")
    assert shown.returncode == 0 and page.returncode == 0, shown.stderr + page.stderr
    names = [s.name for s in spans]
    assert f"execute_tool x{MASK}" in names
    outputs = {
        "--json": proc.stdout + proc.stderr, "trace": trace.read_text(),
        "trace show": shown.stdout, "page": (project / page.stdout.strip()).read_text(),
        "spans": json.dumps([[s.name, s.attributes, s.events, s.status_message]
                             for s in spans], default=str)}
    for where, text in outputs.items():
        assert SECRET not in text and "hunter2" not in text, where
        assert MASK in text, where
    assert len(spans) == 7  # the run, 2 steps, 2 chats, 2 tool calls


def test_the_plain_printer_masks_url_passwords(project: Path, server: Any) -> None:
    server.script(f"Thought: connect to {DSN}\nAction: echo\nAction Input: {DSN}",
                  f"Final Answer: use {DSN}")
    proc = cli(project, "run", "a.yaml", "q")
    assert proc.returncode == 0, proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout
    assert "postgres://u:***@h/db" in proc.stderr and proc.stdout == "use postgres://u:***@h/db\n"


def test_a_secret_across_the_observation_cut_is_masked_not_halved() -> None:
    """Observations are cut at 500 characters on stderr: masked first, so a secret straddling
    the cut cannot show its first half."""
    import io

    from runner import events as ev
    from runner.console import StderrPrinter

    secret = "sk-live-" + "s3cr3t" * 10
    out = io.StringIO()
    printer = StderrPrinter(out, redact=lambda t: redact_text(t, {secret}))
    printer(ev.Observed("r1", 1, "calculator", "x" * 480 + secret + " tail", False, 0.1))
    assert "sk-live" not in out.getvalue() and "s3cr3t" not in out.getvalue()
    assert MASK in out.getvalue()
