"""All-or-nothing file writes: render everything first, then swap files in with ``os.replace``."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


def write_files(files: dict[Path, str]) -> None:
    """Write every ``path -> text`` pair, or leave every existing file untouched.

    Each text is first written in full to a temporary file next to its target (same directory, so
    ``os.replace`` is atomic); only when all of them are on disk are they renamed over the targets.
    Files whose content is already identical are not rewritten. Text is written as UTF-8 with
    ``\\n`` line endings on every platform, so the bytes do not depend on the machine.
    """
    pending: list[tuple[str, Path]] = []
    try:
        for path, text in files.items():
            path = Path(path)
            data = text.encode("utf-8")
            if _current(path) == data:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            pending.append((temp, path))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if path.exists():
                os.chmod(temp, path.stat().st_mode & 0o777)
            else:
                os.chmod(temp, 0o644)
    except BaseException:
        for temp, _ in pending:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
        raise
    for index, (temp, path) in enumerate(pending):
        try:
            os.replace(temp, path)
        except BaseException:
            for later, _ in pending[index:]:
                try:
                    os.unlink(later)
                except FileNotFoundError:
                    pass
            raise


def _current(path: Path) -> bytes | None:
    """The bytes of the file at ``path``; None when there is none or it is not a regular file (a FIFO is
    replaced, never read). Raises :class:`IsADirectoryError` for a folder, before anything is written."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    return path.read_bytes() if stat.S_ISREG(mode) else None


def write_file(path: Path, text: str) -> None:
    """Atomically write one file (see :func:`write_files`)."""
    write_files({Path(path): text})
