"""Atomic writes: whole files or none, old content kept on failure, the usual permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pfadseg.fileio import atomic_path, write_text_atomic


def test_failed_write_keeps_old_content_and_leaves_no_temporary(tmp_path: Path):
    target = tmp_path / "metrics.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_written_files_follow_the_umask(tmp_path: Path):
    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
