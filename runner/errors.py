"""The exception tree of yaml-agent-runner.

    RunnerError                     root of everything the runner raises on purpose
    ├── SpecError                   a spec, template or command line is wrong (exit 2)
    │   ├── TemplateError           a Jinja2 template failed to load, compile or render
    │   ├── PluginError             a plugin failed to load or clashes with another
    │   └── RecordingError          a recording file (--replay) is missing or malformed
    ├── ModelError                  the model call failed after the runner's retries (exit 1)
    │   ├── ModelTimeout            no answer within model.timeout_s
    │   ├── ModelAuthError          401/403: names the variable that holds the key, never the key
    │   ├── ModelRateLimited        429 after every retry
    │   ├── ModelProviderError      a bad request, an unknown model or a malformed reply
    │   └── ReplayMismatch          --replay: no recorded exchange matches the request
    ├── ToolError                   a tool failed; the loop turns it into an observation
    │   ├── ToolTimeout             the tool ran past its timeout_s
    │   └── ToolServerError         an MCP server did not start or list its tools (raised
    │                               while the agent is built: exit 1)
    ├── OutputError                 a final answer does not fit output.schema (exit 1)
    │   └── NotApproved             reflection: the critic did not approve the last draft
    ├── DelegationFailed            a pipeline's step or a handoff's target ended without an
    │                               answer; its status and exit code are that run's
    ├── CheckpointError             the checkpoint database cannot be read or written (exit 1)
    ├── LimitExceeded               a limit ended the run (exit 3); `.limit` names it
    │   ├── MaxIterations           loop.max_iterations
    │   ├── MaxParseErrors          loop.max_parse_errors, in a row
    │   └── LoopDetected            one action with one input more than loop.max_repeats times
    └── Interrupted                 SIGINT or SIGTERM stopped the run at a step boundary
                                    (exit 130 or 143); `runner resume` continues it

Every error that ends a run travels inside a RunResult (status, transcript, partial answer);
`RunFailed` carries that result to callers that prefer exceptions.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .result import RunResult

__all__ = [
    "RunnerError", "SpecError", "SpecErrors", "TemplateError", "PluginError", "RecordingError",
    "ModelError", "ModelTimeout", "ModelAuthError", "ModelRateLimited", "ModelProviderError",
    "ReplayMismatch", "ToolError", "ToolTimeout", "ToolServerError", "OutputError",
    "NotApproved", "DelegationFailed",
    "LimitExceeded",
    "MaxIterations", "MaxParseErrors", "LoopDetected", "Interrupted", "RunFailed",
    "CheckpointError", "did_you_mean",
    "EXIT_OK", "EXIT_FAILED", "EXIT_SPEC", "EXIT_LIMIT", "EXIT_INTERRUPTED", "exit_code_for",
]

EXIT_OK, EXIT_FAILED, EXIT_SPEC, EXIT_LIMIT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class RunnerError(Exception):
    """Root of the runner's exceptions."""

    status = "error"


class SpecError(RunnerError):
    """A spec problem located at `path:line:col: key: reason`."""

    status = "spec_error"

    def __init__(self, reason: str, *, path: str | None = None, line: int | None = None,
                 col: int | None = None, key: str | None = None) -> None:
        self.reason, self.path, self.line, self.col, self.key = reason, path, line, col, key
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.path:
            where = self.path
            if self.line is not None:
                where += f":{self.line}:{self.col or 1}"
            where += ": "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.reason}"


class SpecErrors(SpecError):
    """Several spec problems found in one pass; each is a SpecError."""

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(first.reason, path=first.path, line=first.line, col=first.col,
                         key=first.key)

    def render(self) -> str:
        return "\n".join(e.render() for e in getattr(self, "errors", [])) or super().render()


class TemplateError(SpecError):
    """A template failed to compile or render."""

    status = "template_error"


class PluginError(SpecError):
    """A plugin failed to import, or two plugins claim one name."""

    status = "plugin_error"


class RecordingError(SpecError):
    """A recording file cannot be read: `path:line: reason`."""

    status = "recording_error"


class ModelError(RunnerError):
    """The model call failed after the runner's retries."""

    status = "model_error"
    retryable = False


class ModelTimeout(ModelError):
    status = "model_timeout"
    retryable = True


class ModelAuthError(ModelError):
    status = "model_auth_error"


class ModelRateLimited(ModelError):
    status = "model_rate_limited"
    retryable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelProviderError(ModelError):
    status = "model_provider_error"

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class ReplayMismatch(ModelError):
    """A replayed run sent a request the recording does not hold; the message says where it
    differs from the closest recorded one. Never retried: a retry would send the same."""

    status = "replay_mismatch"


class ToolError(RunnerError):
    """A tool failed; the loop reports it to the model as an observation."""

    status = "tool_error"


class ToolTimeout(ToolError):
    status = "tool_timeout"


class ToolServerError(ToolError):
    """An MCP server did not start, or did not list its tools, while its agent was built."""


class OutputError(RunnerError):
    """The final answer does not fit the spec's output schema."""

    status = "output_error"


class NotApproved(OutputError):
    """The critic did not approve the answer within reflection.max_rounds; the answer is the
    last draft, and every draft and verdict is in the result's `review`."""

    status = "not_approved"


class DelegationFailed(RunnerError):
    """A run this one handed work to (a pipeline's step, a handoff's target) ended without an
    answer; `cause` is what ended it, whose status and exit code this error takes."""

    def __init__(self, message: str, cause: BaseException | None) -> None:
        self.cause = cause
        self.status = getattr(cause, "status", None) or "error"
        super().__init__(message)


class CheckpointError(RunnerError):
    """The checkpoint database cannot be read or written."""

    status = "checkpoint_error"


class LimitExceeded(RunnerError):
    """A limit ended the run: `limit` names it, `count` is how far the run got."""

    status = "limit"

    def __init__(self, limit: str, count: Any, maximum: Any) -> None:
        self.limit, self.count, self.maximum = limit, count, maximum
        self.status = limit
        super().__init__(f"{limit}: reached {count} of {maximum}")


class MaxIterations(LimitExceeded):
    def __init__(self, count: int, maximum: int) -> None:
        super().__init__("max_iterations", count, maximum)


class MaxParseErrors(LimitExceeded):
    def __init__(self, count: int, maximum: int) -> None:
        super().__init__("max_parse_errors", count, maximum)


class LoopDetected(LimitExceeded):
    def __init__(self, count: int, maximum: int) -> None:
        super().__init__("loop_detected", count, maximum)


class Interrupted(RunnerError):
    """A signal stopped the run; its state up to the last step is saved."""

    status = "interrupted"

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}; `runner resume` continues "
                         f"the run")


class RunFailed(RunnerError):
    """Raised by `run_agent(..., raise_on_error=True)`; `.result` keeps the transcript."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        self.status = result.status
        super().__init__(f"run ended with status {result.status}: {result.error}")


def exit_code_for(error: BaseException | None) -> int:
    """The process exit code for an error that ended a run (None: success)."""
    if error is None:
        return EXIT_OK
    if isinstance(error, DelegationFailed) and error.cause is not None:
        return exit_code_for(error.cause)
    if isinstance(error, SpecError):
        return EXIT_SPEC
    if isinstance(error, LimitExceeded):
        return EXIT_LIMIT
    if isinstance(error, Interrupted):
        return 128 + error.signum
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_FAILED


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' or '': the suggestion every "unknown ..." message ends with."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""
