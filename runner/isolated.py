"""Isolated tool calls: one call of a sync tool in a fresh Python process, for code that may
hold the GIL in C (a huge integer power, a regex that backtracks) and would otherwise stall
the event loop, and with it every timeout, deadline and signal handler. The process leads
its own process group, killed with everything in it when the call ends, times out or is
cancelled, and (Linux) by the kernel when the runner dies, even by SIGKILL."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import pickle
import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ToolError
from .tools import Tool, _as_text, _kill_group, _process_groups

__all__ = ["in_process"]


# the folder holding this package goes last on the path: found even when not installed
_ISOLATED_BOOT = (f"import sys; sys.path.append({os.path.dirname(os.path.dirname(__file__))!r}); "
                  f"from runner.isolated import main; main(%d)")


async def in_process(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """One call in a fresh `python -c` process (a spawn: never a fork of this threaded
    process, and nothing of `__main__` is re-run). It leads its own process group, killed
    with everything in it when the call ends, times out or is cancelled, as with run_process;
    the event loop only waits on its pipes."""
    try:  # pickled here: a function a fresh process cannot import fails before one starts
        payload = pickle.dumps((sys.path, pickle.dumps((_importable(fn), kwargs))))
    except Exception as exc:
        raise ToolError(f"it cannot run in a separate process ({type(exc).__name__}: {exc}); "
                        f"an isolated tool must be a module-level function whose arguments "
                        f"pickle") from None
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _ISOLATED_BOOT % os.getpid(), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, start_new_session=True)
    _process_groups.add(proc.pid)
    try:
        out, _ = await proc.communicate(payload)
    finally:
        _kill_group(proc.pid)  # whatever it left running goes too
        _process_groups.discard(proc.pid)
        if proc.returncode is None:
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), 1.0)
            except (TimeoutError, asyncio.CancelledError):
                pass
    if not out:
        raise ToolError(f"its process ended without a result ({_ended(proc.returncode)})")
    try:
        ok, value = pickle.loads(out)
    except Exception as exc:  # a result or exception that does not unpickle here
        raise ToolError(f"its result could not be read: {type(exc).__name__}: {exc}") from None
    if ok:
        return value
    raise value


def _ended(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


@dataclass(frozen=True)
class _ToolRef:
    """Where a fresh process finds a decorated function: `@tool` rebinds the module's name
    to the Tool, so pickle cannot find the function itself by name."""

    module: str
    qualname: str


def _importable(fn: Callable[..., Any]) -> Any:
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if module and qualname and "<locals>" not in qualname:
        found: Any = sys.modules.get(module)
        for part in qualname.split("."):
            found = getattr(found, part, None)
        if isinstance(found, Tool) and found.fn is fn:
            return _ToolRef(module, qualname)
    return fn


def main(parent: int) -> None:
    """The isolated process: read the call on stdin, run it, write (ok, value) on stdout."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the tool's own prints go to stderr, never into its result
    _die_with_parent(parent)
    path, call = pickle.loads(sys.stdin.buffer.read())
    sys.path[:] = path  # the caller's, with whatever it added at run time
    try:
        target, kwargs = pickle.loads(call)
        fn = _resolve(target) if isinstance(target, _ToolRef) else target
        result = fn(**kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
        outcome: tuple[bool, Any] = (True, result)
    except SystemExit as exc:  # argparse and friends: a tool failure, as in a thread
        outcome = (False, ToolError(f"SystemExit: {exc.code}"))
    except BaseException as exc:  # delivered to the caller, not raised here
        outcome = (False, exc)
    try:
        data = pickle.dumps(outcome)
        if not outcome[0]:
            pickle.loads(data)  # an exception whose class cannot be rebuilt from its pickle
    except Exception:  # a result or exception that does not pickle: send it as text
        ok, value = outcome
        data = pickle.dumps((True, _as_text(value)) if ok else
                            (False, ToolError(f"{type(value).__name__}: {value}")))
    channel.write(data)
    channel.flush()


def _resolve(ref: _ToolRef) -> Callable[..., Any]:
    found: Any = importlib.import_module(ref.module)
    for part in ref.qualname.split("."):
        found = getattr(found, part)
    return found.fn if isinstance(found, Tool) else found


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this process when the runner dies, so not even a runner
    killed with SIGKILL leaves it behind."""
    if sys.platform != "linux":
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the runner died before the line above
        os._exit(1)
