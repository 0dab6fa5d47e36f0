"""The live view of `runner run` on a real terminal (a pty on stderr): a spinner with the
elapsed time while the model or a tool works, the plain printer's lines as steps happen,
sub-agents indented, nothing left of the spinner at the end, the answer on stdout only;
quiet with -q, and plain lines without escape codes when stderr is not a terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest


from conftest import ROOT

KEY = "sk-test-not-a-real-key"
FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")

DRIVER = f"""\
import sys, time
sys.path.insert(0, {str(ROOT)!r})
import runner
from runner.cli import main


@runner.tool
def nap(seconds: str) -> str:
    '''Sleeps for the number of seconds its input starts with.'''
    time.sleep(float(seconds.split()[0]))
    return "rested"


class Naps:
    @runner.hookimpl
    def register_tools(self, register):
        register(nap)


runner.register_plugin(Naps())
main()
"""
"""`runner` with one more tool, slow on purpose: the CLI's own code, a plugin registered."""


@pytest.fixture
def project(tmp_path: Path, server: Any) -> Path:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "cli.py").write_text(DRIVER)
    (tmp_path / "writer.yaml").write_text(
        "version: 1\nname: writer\ndescription: Writes one sentence.\nmemory: {backend: none}\n"
        f"loop: {{style: react}}\nmodel: {{id: openai/scripted, api_base: '{server.url}'}}\n")
    (tmp_path / "boss.yaml").write_text(
        "version: 1\nname: boss\nmemory: {backend: none}\nloop: {style: react}\n"
        "checkpoint: {enabled: false}\ntrace: {enabled: false}\n"
        "tools:\n  - calculator\n  - nap\n  - agent: writer.yaml\n")
    return tmp_path


def wire(server: Any) -> list[str]:
    return ["--set", "model.id=openai/scripted", "--set", f"model.api_base={server.url}"]


class Terminal:
    """`python cli.py ARGS` with stderr (and, if asked, stdin) on a pty; stdout a pipe."""

    def __init__(self, project: Path, *args: str, stdin_tty: bool = False) -> None:
        self.master, slave = pty.openpty()
        env = {**os.environ, "OPENAI_API_KEY": KEY, "TERM": "xterm", "COLUMNS": "100"}
        env.pop("NO_COLOR", None)
        self.proc = subprocess.Popen(
            [sys.executable, "cli.py", *args], cwd=project, env=env, stderr=slave,
            stdout=subprocess.PIPE, stdin=slave if stdin_tty else subprocess.DEVNULL,
            start_new_session=True)
        os.close(slave)
        self.seen = b""

    def read_until(self, pattern: str, timeout: float = 60) -> None:
        """Read until `pattern` matches what was shown (colours left out)."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, CSI.sub("", self.text)):
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} never appeared; the terminal got {self.text!r}")
            self._read(0.2)

    def finish(self, timeout: float = 60) -> tuple[str, int]:
        """Read the terminal until the process exits; (its stdout, its exit code)."""
        deadline = time.monotonic() + timeout
        try:
            while self.proc.poll() is None and time.monotonic() < deadline:
                self._read(0.2)
            while self._read(0.3):  # what is still buffered in the pty
                pass
            stdout = self.proc.stdout.read().decode() if self.proc.poll() is not None else ""
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            os.close(self.master)
        return stdout, self.proc.returncode

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the process closed its side
            return False
        self.seen += chunk
        return bool(chunk)

    @property
    def text(self) -> str:
        return self.seen.decode("utf-8", "replace")


def screen(raw: str) -> list[str]:
    """What the terminal shows at the end: carriage returns, line erases and colours applied
    (a small emulator: enough for a spinner redrawn on one line)."""
    lines: list[str] = []
    line: list[str] = []
    col = 0
    i = 0
    while i < len(raw):
        m = CSI.match(raw, i)
        if m:
            if m.group(2) == "K":  # erase in line (2K: all of it)
                line = [] if m.group(1) == "2" else line[:col]
            i = m.end()
            continue
        c = raw[i]
        if c == "\r":
            col = 0
        elif c == "\n":
            lines.append("".join(line).rstrip())
            line, col = [], 0
        else:
            line[col:col + 1] = [c]
            col += 1
        i += 1
    if line:
        lines.append("".join(line).rstrip())
    return lines


def spinner_times(raw: str, label: str) -> list[float]:
    """The elapsed times a spinner on `label` showed, in order."""
    plain = CSI.sub("", raw)
    return [float(t) for t in re.findall(rf"[{FRAMES}] {re.escape(label)} … (\d+\.\d)s", plain)]


def test_spinner_on_the_model_call_then_the_steps(project: Path, server: Any) -> None:
    server.script({"delay": 1.5, "content": "Thought: multiply\nAction: calculator[17*23]"},
                  "Final Answer: it is 391")
    term = Terminal(project, "run", "boss.yaml", "17*23?", *wire(server))
    stdout, code = term.finish()
    raw = term.text
    assert code == 0, raw
    assert stdout == "it is 391\n"
    assert "it is 391" not in raw  # the answer is on stdout only
    # while the model thought, the spinner turned and its elapsed time went up
    times = spinner_times(raw, "model openai/scripted")
    assert len(set(times)) >= 5 and times == sorted(times) and times[-1] >= 1.0
    assert len({c for c in raw if c in FRAMES}) >= 5
    assert "\x1b[2K" in raw
    # at the end the spinner is gone and the steps are on the screen, in order
    lines = screen(raw)
    assert lines[0] == "▶ boss on openai/scripted"
    assert re.fullmatch(r"  · model 1\d{3} ms, 10\+5 tokens", lines[1])
    assert lines[2:5] == ["Thought: multiply", "Action: calculator[17*23]", "Observation: 391"]
    assert re.fullmatch(r"  · model \d+ ms, 10\+5 tokens", lines[5])
    assert re.fullmatch(r"■ finished in 1\.\d\ds", lines[6])
    assert len(lines) == 7 and not any(c in FRAMES for l in lines for c in l)


def test_tool_spinner_and_a_sub_agent_indented(project: Path, server: Any) -> None:
    server.script(f"Thought: rest first\nAction: nap[1.5 {KEY}]",
                  "Thought: delegate\nAction: writer[a line about cats]",
                  {"delay": 1.2, "content": "Final Answer: Cats nap in the sun."},
                  "Final Answer: done")
    term = Terminal(project, "run", "boss.yaml", "cats", *wire(server))
    stdout, code = term.finish()
    raw = term.text
    assert code == 0, raw
    assert stdout == "done\n"
    assert KEY not in raw  # spinner labels are redacted like the lines
    times = spinner_times(raw, "nap[1.5 ***]")
    assert len(set(times)) >= 5 and times[-1] >= 1.0
    # the sub-agent's model call spins one level in
    plain = CSI.sub("", raw)
    assert re.search(rf"\r  [{FRAMES}] model openai/scripted … 1\.\ds", plain)
    lines = screen(raw)
    assert lines == [
        "▶ boss on openai/scripted", lines[1], "Thought: rest first",
        "Action: nap[1.5 ***]", "Observation: rested", lines[5], "Thought: delegate",
        "Action: writer[a line about cats]",
        "  ▶ writer on openai/scripted", lines[9], lines[10],
        "Observation: Cats nap in the sun.", lines[12], lines[13]]
    assert re.fullmatch(r"    · model 1\d{3} ms, 10\+5 tokens", lines[9])
    assert re.fullmatch(r"  ■ finished in 1\.\d\ds", lines[10])
    assert re.fullmatch(r"■ finished in \d\.\d\ds", lines[13])


def test_a_failed_run_leaves_no_spinner(project: Path, server: Any) -> None:
    server.script({"delay": 1.0, "status": 500, "body": "upstream down"})
    term = Terminal(project, "run", "boss.yaml", "q", *wire(server), "--set", "model.retries=0")
    stdout, code = term.finish()
    assert code != 0 and stdout == ""
    assert len(set(spinner_times(term.text, "model openai/scripted"))) >= 3
    lines = screen(term.text)
    assert lines[0] == "▶ boss on openai/scripted"
    assert re.fullmatch(r"■ \w+ in 1\.\d\ds", lines[1])
    assert "upstream down" in lines[2]
    assert len(lines) == 3


def test_an_approval_prompt_is_not_drawn_over(project: Path, server: Any) -> None:
    (project / "boss.yaml").write_text(
        "version: 1\nname: boss\nmemory: {backend: none}\nloop: {style: react}\n"
        "checkpoint: {enabled: false}\ntrace: {enabled: false}\n"
        "tools:\n  - nap: {confirm: true}\n")
    server.script("Thought: rest\nAction: nap[0.5]", "Final Answer: done")
    term = Terminal(project, "run", "boss.yaml", "q", *wire(server), stdin_tty=True)
    term.read_until(r"\[y/N\] ")
    time.sleep(0.6)  # the spinner thread ticks meanwhile: the prompt must stay
    term.write(b"y\n")
    stdout, code = term.finish()
    assert code == 0 and stdout == "done\n", term.text
    lines = screen(term.text)
    assert 'Allow nap {"seconds": "0.5"}? [y/N] y' in lines
    assert lines.index("Action: nap[0.5]") < lines.index("Observation: rested")


def test_ctrl_c_stops_cleanly(project: Path, server: Any) -> None:
    server.script({"delay": 1.5, "content": "Thought: multiply\nAction: calculator[17*23]"},
                  "Final Answer: never asked")
    term = Terminal(project, "run", "boss.yaml", "q", *wire(server))
    term.read_until(r"model openai/scripted … 0\.[3-9]s")
    os.killpg(term.proc.pid, signal.SIGINT)
    stdout, code = term.finish()
    assert code == 130 and stdout == ""
    lines = screen(term.text)
    notice = next(i for i, l in enumerate(lines) if l.startswith("SIGINT: stopping after this"))
    assert lines[notice - 1] == ""  # the spinner line was cleared before the notice
    assert not any(c in FRAMES for l in lines for c in l)
    assert any(re.fullmatch(r"■ interrupted in \d\.\d\ds", l) for l in lines[notice:])
    assert len(server.requests) == 1


def test_a_second_ctrl_c_exits_at_once_and_clears_the_spinner(project: Path,
                                                               server: Any) -> None:
    server.script("Thought: rest\nAction: nap[20]", "Final Answer: never asked")
    term = Terminal(project, "run", "boss.yaml", "q", *wire(server))
    term.read_until(r"nap\[20\] … 0\.[3-9]s")
    os.killpg(term.proc.pid, signal.SIGINT)
    term.read_until(r"SIGINT: stopping after this step.*\n.*nap\[20\] … \d+\.\ds")
    os.killpg(term.proc.pid, signal.SIGINT)  # the tool is still running: quit now
    stdout, code = term.finish(timeout=15)
    assert code == 130 and stdout == ""
    lines = screen(term.text)
    assert lines[-1].startswith("SIGINT: stopping after this step")  # nothing left below it
    assert term.text.endswith("\r\x1b[2K")


def test_quiet_shows_nothing(project: Path, server: Any) -> None:
    server.script({"delay": 0.8, "content": "Final Answer: hush"})
    term = Terminal(project, "run", "boss.yaml", "q", "-q", *wire(server))
    stdout, code = term.finish()
    assert code == 0 and stdout == "hush\n"
    assert term.seen == b""


def test_plain_lines_when_stderr_is_not_a_terminal(project: Path, server: Any) -> None:
    server.script({"delay": 0.8, "content": "Thought: multiply\nAction: calculator[17*23]"},
                  "Final Answer: it is 391")
    env = {**os.environ, "OPENAI_API_KEY": KEY, "TERM": "xterm", "COLUMNS": "100"}
    proc = subprocess.run([sys.executable, "cli.py", "run", "boss.yaml", "q", *wire(server)],
                          cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "it is 391\n"
    assert "\x1b" not in proc.stderr and "\r" not in proc.stderr
    assert not any(c in FRAMES for c in proc.stderr)
    lines = proc.stderr.splitlines()
    assert lines[0] == "▶ boss on openai/scripted"
    assert lines[2:5] == ["Thought: multiply", "Action: calculator[17*23]", "Observation: 391"]
    assert re.fullmatch(r"■ finished in \d\.\d\ds", lines[-1]) and len(lines) == 7


HOSTILE = ("\x1b]0;pwned\x07 \x1b]52;c;cGF5bG9hZA==\x07 \x1b[2J \x1b[8mhidden "
           "\x9b31mred \u202eevil")
"""A title, the clipboard (OSC 52), a cleared screen, concealed text, a C1 CSI, an RTL
override: what a hostile model's reply can hold."""


def test_control_codes_from_the_model_are_shown_not_obeyed(project: Path, server: Any) -> None:
    server.script({"delay": 0.6, "content": f"Thought: {HOSTILE}\nAction: nap[0.6 {HOSTILE}]"},
                  "Final Answer: done")
    term = Terminal(project, "run", "boss.yaml", "q", *wire(server))
    stdout, code = term.finish()
    raw = term.text
    assert code == 0 and stdout == "done\n", raw
    # the view's own codes are its line erase and its colours; nothing else gets through
    own = re.sub(r"\r\x1b\[2K|\x1b\[[0-9;]*m", "", raw)
    for c in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert c not in own, (c, own)
    assert "\x1b[8m" not in raw and "\x1b[2J" not in raw
    shown = "\\x1b]0;pwned\\x07 \\x1b]52;c;cGF5bG9hZA==\\x07 \\x1b[2J \\x1b[8mhidden " \
            "\\x9b31mred \\u202eevil"
    lines = screen(raw)
    assert f"Thought: {shown}" in lines and f"Action: nap[0.6 {shown}]" in lines
    # the spinner's label is escaped too
    assert re.search(rf"[{FRAMES}] nap\[0\.6 {re.escape(shown[:30])}", CSI.sub("", raw))
