"""catalog.atomic.write_files: all files or none."""

from __future__ import annotations

import os

import pytest

from catalog import atomic


def test_writes_every_file(tmp_path):
    files = {tmp_path / "a.md": "alpha\n", tmp_path / "sub" / "b.bib": "beta é\n"}
    atomic.write_files(files)
    assert (tmp_path / "a.md").read_bytes() == b"alpha\n"
    assert (tmp_path / "sub" / "b.bib").read_bytes() == "beta é\n".encode()


def test_newlines_are_not_translated(tmp_path):
    atomic.write_files({tmp_path / "a.md": "one\ntwo\n"})
    assert (tmp_path / "a.md").read_bytes() == b"one\ntwo\n"


def test_unchanged_file_is_not_rewritten(tmp_path):
    path = tmp_path / "a.md"
    path.write_text("same\n", encoding="utf-8")
    os.utime(path, (1_000_000, 1_000_000))
    atomic.write_files({path: "same\n"})
    assert path.stat().st_mtime == 1_000_000


def test_failure_while_writing_temp_files_changes_nothing(tmp_path, monkeypatch):
    first, second = tmp_path / "a.md", tmp_path / "b.md"
    first.write_text("old a\n", encoding="utf-8")
    second.write_text("old b\n", encoding="utf-8")
    real_fsync = os.fsync
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        atomic.write_files({first: "new a\n", second: "new b\n"})
    assert first.read_text(encoding="utf-8") == "old a\n"
    assert second.read_text(encoding="utf-8") == "old b\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.md", "b.md"]  # no temp file left


def test_keeps_file_mode(tmp_path):
    path = tmp_path / "run"
    path.write_text("old\n", encoding="utf-8")
    path.chmod(0o755)
    atomic.write_files({path: "new\n"})
    assert path.stat().st_mode & 0o777 == 0o755
