"""The `files` tools: `- files: {root: workspace/, write: false}` gives `read_file`,
`list_files` and, with `write: true`, `write_file`, all confined to `root`.

A path from the model is taken relative to the root and resolved (symlinks followed) before
it is judged, and the file actually opened is checked again, so `../`, absolute paths and
symlinks out of the root are refused. Only regular files are read or written (a FIFO is
never waited on, a device never opened for I/O); binary files are described, not dumped;
long files are read in pieces. File text is returned as data, like any observation."""

from __future__ import annotations

import codecs
import difflib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from .._files import open_regular
from ..errors import ToolError
from ..hookspecs import hookimpl
from ..spec._yaml import format_path
from ..tools import Tool, ToolFactory, tool

__all__ = ["FILES", "FilesOptions"]

TIMEOUT_S = 10.0
BINARY_SAMPLE = 8192
MARKER_ROOM = 300
"""Characters kept free in an observation for read_file's "read on" marker."""


class FilesOptions(BaseModel):
    """Options of a `files` entry."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)
    spec_paths: ClassVar[tuple[str, ...]] = ("root",)
    """Fields holding paths that must stay inside the project root (checked on resolve)."""

    root: str
    """The folder the tools see, relative to the spec file; it must be inside the project root."""
    write: bool = False
    """true: also give the model `write_file` (inside the root only)."""
    max_read_bytes: int = Field(200_000, ge=1, le=100_000_000)
    """Most bytes one read_file call returns (also bounded by the observation size)."""
    max_list_entries: int = Field(500, ge=1, le=100_000)
    """Most entries one list_files call returns."""
    max_write_bytes: int = Field(1_000_000, ge=1, le=100_000_000)
    """Largest content (UTF-8 bytes) one write_file call may write."""


@dataclass
class _Root:
    """The confined folder and how errors name it."""

    path: Path
    shown: str
    """The root as the spec spells it, for messages."""
    key: str
    """The spec key to edit to widen the root."""

    def locate(self, rel: str) -> Path:
        """`rel` resolved inside the root; ToolError saying why not."""
        if not rel.strip():
            rel = "."
        if os.path.isabs(rel) or rel.startswith("~"):
            raise ToolError(f"{rel!r} is an absolute path; paths are relative to the files root "
                            f"{self.shown!r} (to reach other folders, change {self.key})")
        try:
            p = (self.path / rel).resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
            raise ToolError(f"cannot use the path {rel!r} ({exc}); give a plain path inside "
                            f"the files root {self.shown!r}") from None
        if not p.is_relative_to(self.path):
            through = " through a symlink" if Path(
                os.path.normpath(self.path / rel)).is_relative_to(self.path) else ""
            raise ToolError(f"{rel!r} leads outside the files root {self.shown!r}{through}; "
                            f"use a path inside it (to reach other folders, change {self.key})")
        return p

    def show(self, p: Path) -> str:
        rel = p.relative_to(self.path).as_posix()
        return rel if rel != "." else "."

    def check_opened(self, fd: int, rel: str) -> None:
        """The file really opened must be inside the root (a path swapped meanwhile is not)."""
        try:
            real = Path(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # no /proc: the resolve-then-check above stands alone
            return
        if not real.is_relative_to(self.path):
            raise ToolError(f"{rel!r} leads outside the files root {self.shown!r}; "
                            f"use a path inside it")

    def missing(self, rel: str, p: Path) -> ToolError:
        """A missing path: the names nearby, so the model can correct itself."""
        folder = p.parent
        while not folder.is_dir() and folder != self.path:
            folder = folder.parent
        try:
            names = sorted(e.name + ("/" if e.is_dir(follow_symlinks=False) else "")
                           for e in os.scandir(folder))
        except OSError:
            names = []
        close = difflib.get_close_matches(p.name, names, n=5, cutoff=0.5) or names[:10]
        where = self.show(folder)
        prefix = "" if where == "." else where + "/"
        nearby = (f"; nearby: {', '.join(prefix + n for n in close)}" if close
                  else f"; {where!r} is empty")
        return ToolError(f"no such file or folder {rel!r} in the files root {self.shown!r}"
                         f"{nearby}; call list_files to see what is there")


def _describe_binary(data: bytes) -> str:
    kinds = {b"\x89PNG": "a PNG image", b"%PDF": "a PDF document", b"PK\x03\x04": "a zip archive",
             b"\x7fELF": "an executable", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
             b"\x1f\x8b": "gzip data", b"SQLite format 3": "an SQLite database"}
    return next((k for magic, k in kinds.items() if data.startswith(magic)), "binary data")


def _looks_binary(sample: bytes, at_end: bool) -> bool:
    """NUL bytes or bytes that are not UTF-8 (an incomplete last character is allowed)."""
    if b"\x00" in sample:
        return True
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(sample, final=at_end)
    except UnicodeDecodeError:
        return True
    return False


def _text_piece(data: bytes, final: bool) -> tuple[str, int]:
    """`data` as text, cut back to a whole character unless it is the file's end: (text,
    bytes used)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(data, final=final)
    pending = len(decoder.getstate()[0])
    return text, len(data) - pending


def _build(options: FilesOptions, ctx: Any) -> list[Tool]:
    key = ctx.ref.key
    path = ctx.resolve(options.root)  # SpecError if outside the project root
    if not path.is_dir():
        raise ctx.spec.source.error(key + ("root",), f"files root {options.root!r} is not a "
                                    f"folder ({path}); create it or point root at one")
    root = _Root(path, options.root, f"{format_path(key)}.root in the spec")
    cap = ctx.ref.common.max_output_chars or ctx.spec.loop.max_observation_chars
    piece = min(options.max_read_bytes, cap - MARKER_ROOM if cap > 2 * MARKER_ROOM else cap // 2)

    def read_file(path: Annotated[str, "file path, relative to the files root"],
                  offset: Annotated[int, "first byte to read (0: the start)"] = 0,
                  limit: Annotated[int | None, "most bytes to read (default: as many as fit)"]
                  = None) -> str:
        """Reads a text file inside the files root; long files come in pieces (offset, limit)."""
        p = root.locate(path)
        if offset < 0 or (limit is not None and limit < 1):
            raise ToolError("offset must be 0 or more and limit 1 or more")
        if p.is_dir():
            raise ToolError(f"{path!r} is a folder; call list_files with it")
        try:
            f = open_regular(p)
        except FileNotFoundError:
            raise root.missing(path, p) from None
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise ToolError(f"{path!r} is not a regular file (a FIFO, socket or device); "
                                f"only regular files are read") from None
            raise ToolError(f"cannot read {path!r}: {exc.strerror}") from None
        with f:
            root.check_opened(f.fileno(), path)
            size = os.fstat(f.fileno()).st_size
            sample = f.read(BINARY_SAMPLE)
            if _looks_binary(sample, at_end=len(sample) < BINARY_SAMPLE):
                raise ToolError(f"{path!r} is a binary file ({_describe_binary(sample)}, "
                                f"{size} bytes); read_file shows text files only")
            if offset >= size and size:
                raise ToolError(f"offset {offset} is past the end of {path!r} ({size} bytes)")
            want = min(limit or piece, piece)
            f.seek(offset)
            data = f.read(want + 1)
        final = len(data) <= want
        text, used = _text_piece(data[:want], final)
        end = offset + used
        if final and offset == 0:
            return text
        if final:
            return text + f"\n[bytes {offset}-{end} of {path} ({size} bytes): the end]"
        return text + (f"\n[... bytes {offset}-{end} of {size} shown; call read_file with "
                       f"path {path!r} and offset {end} to read on ...]")

    def list_files(path: Annotated[str, "folder, relative to the files root"] = ".",
                   recursive: Annotated[bool, "also list the folders below"] = False) -> str:
        """Lists the files and folders in a folder inside the files root (folders end in /)."""
        p = root.locate(path)
        if not p.exists():
            raise root.missing(path, p)
        if not p.is_dir():
            raise ToolError(f"{path!r} is a file, not a folder; call read_file with it")
        cap = options.max_list_entries
        lines: list[str] = []
        dropped = 0
        for folder, dirs, files in os.walk(p, followlinks=False):
            dirs.sort()
            names = sorted([*(d + "/" for d in dirs), *files])
            room = cap - len(lines)
            lines.extend(_entry(root, Path(folder), n) for n in names[:room])
            dropped += max(0, len(names) - room)
            if not recursive or dropped:  # past the cap the walk stops: deeper ones uncounted
                break
        if not lines:
            return f"{root.show(p)!r} is empty"
        if dropped:
            more = f"at least {dropped} more" if recursive else f"{dropped} more"
            lines.append(f"[... {more} entries not shown (max_list_entries {cap}); "
                         f"list a subfolder ...]")
        return "\n".join(lines)

    def write_file(path: Annotated[str, "file path, relative to the files root"],
                   content: Annotated[str, "the whole new text of the file"]) -> str:
        """Writes a text file inside the files root (folders are made), replacing it if it exists."""
        data = content.encode("utf-8")
        if len(data) > options.max_write_bytes:
            raise ToolError(f"content of {len(data)} bytes is more than max_write_bytes "
                            f"({options.max_write_bytes}); write less, or in several files")
        p = root.locate(path)
        if p == root.path or p.is_dir():
            raise ToolError(f"{path!r} is a folder; give a file path inside it")
        not_regular = ToolError(f"{path!r} is not a regular file (a FIFO, socket or device); "
                                f"only regular files are written")
        if p.exists() and not p.is_file():
            raise not_regular
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a symlink put in its place meanwhile is refused, never followed;
            # no O_TRUNC before the file is known to be regular.
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.ELOOP):  # a FIFO; a symlink planted meanwhile
                raise not_regular from None
            raise ToolError(f"cannot write {path!r}: {exc.strerror}") from None
        try:
            root.check_opened(fd, path)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise not_regular
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        return f"wrote {len(data)} bytes to {root.show(p)}"

    made = [tool(read_file, timeout_s=TIMEOUT_S), tool(list_files, timeout_s=TIMEOUT_S)]
    if options.write:
        made.append(tool(write_file, timeout_s=TIMEOUT_S, idempotent=True))
    return made


def _entry(root: _Root, base: Path, name: str) -> str:
    """One list_files line: the path, and a file's size; a symlink is shown, not followed."""
    p = base / name.rstrip("/")
    shown = root.show(p) + ("/" if name.endswith("/") else "")
    try:
        st = os.lstat(p)
    except OSError:
        return shown
    if stat.S_ISLNK(st.st_mode):
        return f"{shown.rstrip('/')} (symlink)"
    if stat.S_ISREG(st.st_mode):
        return f"{shown} ({st.st_size} bytes)"
    if not stat.S_ISDIR(st.st_mode):
        return f"{shown} (not a regular file)"
    return shown


FILES = ToolFactory("files", "read_file, list_files and (write: true) write_file inside a "
                    "root folder.", FilesOptions, _build)


@hookimpl
def register_tools(register: Any) -> None:
    register(FILES)
