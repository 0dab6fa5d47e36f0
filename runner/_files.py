"""Files and folders the runner makes for a run's state (traces, checkpoints, memory, pages):
private whatever the umask, since they hold prompts, answers and tool results. Folders it
makes are 0700, files 0600; a file of ours that an older runner left readable is tightened."""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["private_dir", "private_file"]


def private_dir(path: Path) -> None:
    """Make `path` and each missing folder above it, 0700 (folders that exist keep their mode:
    they may be the user's own)."""
    missing: list[Path] = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:  # made meanwhile by another process
            pass


def private_file(path: Path, *companions: str) -> None:
    """Create `path` empty and 0600 unless it exists; a dangling symlink is refused, not
    followed to make its target. An existing regular file of ours (and each of its
    `companions`, the suffixes of files beside it such as SQLite's "-wal") is made 0600."""
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
        return
    for p in (path, *(Path(f"{path}{c}") for c in companions)):
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077:
            os.chmod(p, 0o600)
