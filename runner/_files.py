"""Files the runner writes and reads back. What it makes for a run's state (traces,
checkpoints, memory, pages) is private whatever the umask, since it holds prompts, answers
and tool results: folders 0700, files 0600, and a file of ours an older runner left readable
is tightened. What it reads back (specs, recordings, traces) is read only from a regular
file and bounded in size."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import IO

__all__ = ["private_dir", "private_file", "open_regular", "read_bounded", "TooLarge"]


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


class TooLarge(ValueError):
    """A file past the size its reader allows; `size` is what it holds (at least)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes, more than {limit}")
        self.size, self.limit = size, limit


def open_regular(path: str | os.PathLike[str]) -> IO[bytes]:
    """`path` opened for reading if it is a regular file (OSError "not a regular file"
    otherwise): a FIFO is never waited on, a device never read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return os.fdopen(fd, "rb")


def read_bounded(path: str | os.PathLike[str], limit: int) -> bytes:
    """A regular file's bytes, at most `limit` of them (TooLarge past that, even if the file
    grows while it is read); OSError as `open_regular`."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise TooLarge(size, limit)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(len(data), limit)
    return data


def fd_share(low: int, high: int) -> int:
    """A quarter of this process's soft file-descriptor limit, kept within [low, high]
    (`high` when unlimited, `low` where the limit cannot be read): what one kind of
    long-lived descriptor (model connections, open trace files) may take."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return low
    if soft == resource.RLIM_INFINITY:
        return high
    return max(low, min(high, soft // 4))
