"""Keeps a server's whole process tree from outliving the runner (run as a script, standard
library only: `python -I -S _process_guard.py PARENT_PID COMMAND [ARGS...]`).

The guard is the child the runner starts; it starts the command with the guard's own stdin,
stdout and stderr, so the protocol flows between the runner and the server untouched, and
then waits. It is a child subreaper (Linux), so every descendant the server leaves behind,
daemonised or not, stays below it. The tree is killed, children first and the guard last:
- when the server exits (a server that quits when its stdin closes may leave grandchildren);
- when the guard gets SIGTERM, SIGINT or SIGHUP (the MCP SDK's shutdown sends SIGTERM);
- when the runner dies, however it dies, SIGKILL included: the kernel's parent-death signal
  (Linux), or, elsewhere, a poll of the parent pid.
"""

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _descendants(root: int) -> list[int]:
    """Every live process below `root`, found through /proc (Linux)."""
    parents: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name is in parentheses and may hold anything: read after the last ')'
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1:
            parents.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_tree(leader: int) -> None:
    """SIGKILL every process below this one, until none is left (a process may fork while the
    tree is walked, so walk again), then the server's process group."""
    me = os.getpid()
    for _ in range(100):
        alive = _descendants(me)
        if not alive:
            break
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _reap()
        time.sleep(0.005)
    try:  # without /proc: the server's own process group (it lives while any member does)
        os.killpg(leader, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass
    _reap()


def main(argv: list[str]) -> int:
    parent, command = int(argv[1]), argv[2:]
    libc = None
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            libc = None
    if os.getppid() != parent:  # the runner died before the signal was armed
        return 1
    try:
        pid = os.fork()
    except OSError as exc:
        print(f"runner: cannot start {command[0]}: {exc}", file=sys.stderr, flush=True)
        return 127
    if pid == 0:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.setpgid(0, 0)  # a group of its own: killpg reaches it even without /proc
            os.execvp(command[0], command)
        except OSError as exc:
            print(f"runner: cannot start {command[0]}: {exc.strerror}", file=sys.stderr,
                  flush=True)
        os._exit(127)

    # The server holds the pipes now; the guard lets go of stdin and stdout, so that the
    # runner closing its end is an end of file the server sees.
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)

    def stop(signum: int, _frame: object) -> None:
        kill_tree(pid)
        os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    if libc is None:  # no parent-death signal here: poll for the parent instead
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, daemon=True).start()

    while True:
        try:
            done, status = os.waitpid(-1, 0)  # orphans reparented to the guard are reaped too
        except ChildProcessError:
            return 0
        if done == pid:
            code = os.waitstatus_to_exitcode(status)
            kill_tree(pid)
            if code != 0:
                print(f"runner: the server exited with code {code}", file=sys.stderr, flush=True)
            return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
