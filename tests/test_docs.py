"""Documentation and docstrings refer only to files the repository has."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: A repository path as prose names it: under docs/, benchmarks/, tests/ or src/pfadseg/ (or pfadseg/), with an extension.
PATH = re.compile(r"(?<![\w./-])((?:docs|benchmarks|tests|src/pfadseg|pfadseg)/[\w./-]*\w\.(?:md|py|yaml|toml|json))\b")


def referenced_paths(text: str) -> set[str]:
    return set(PATH.findall(text))


def missing_references(root: Path, files: list[Path]) -> dict[str, set[str]]:
    """File → the repository paths it names that do not exist (``pfadseg/...`` read as ``src/pfadseg/...``)."""
    missing = {}
    for path in files:
        names = referenced_paths(path.read_text(encoding="utf-8"))
        absent = {n for n in names if not (root / n).exists() and not (root / "src" / n).exists()}
        if absent:
            missing[str(path.relative_to(root))] = absent
    return missing


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.md", "*.py", "*.yaml", "*.toml"], cwd=REPO, capture_output=True, text=True, check=True)
    return [REPO / line for line in listed.stdout.splitlines() if (REPO / line).is_file()]


def test_the_checker_finds_a_reference_to_a_missing_file(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "design.md").write_text("see docs/design.md §5 and docs/SPEC.md; `pfadseg/cli.py`\n")
    (tmp_path / "src" / "pfadseg").mkdir(parents=True)
    (tmp_path / "src" / "pfadseg" / "cli.py").write_text('"""See docs/missing.md."""\n')
    files = [tmp_path / "docs" / "design.md", tmp_path / "src" / "pfadseg" / "cli.py"]
    assert missing_references(tmp_path, files) == {"docs/design.md": {"docs/SPEC.md"}, "src/pfadseg/cli.py": {"docs/missing.md"}}


def test_no_file_refers_to_a_file_the_repository_lacks():
    files = [p for p in tracked_text_files() if p != Path(__file__).resolve()]  # this file names missing ones on purpose
    assert any(p.name == "README.md" for p in files)
    assert missing_references(REPO, files) == {}
