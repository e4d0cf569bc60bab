"""The layering rules that import-linter cannot see: only the CLI prints, exits or reads
the environment. (import-linter in tools/check enforces which package imports which.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "ostreefs"
LIBRARY_FILES = sorted(p for p in PKG.rglob("*.py")
                       if "cli" not in p.relative_to(PKG).parts and p.name != "__main__.py")


ALLOW = "# allowed-exit:"  # a forked child that must end there, with the reason given


def _violations(path: Path) -> list[str]:
    text = path.read_text()
    allowed = {i + 1 for i, line in enumerate(text.splitlines()) if ALLOW in line}
    tree = ast.parse(text, str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in ("print", "exit", "quit", "input"):
                found.append(f"{f.id}() at line {node.lineno}")
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                if (f.value.id, f.attr) in {("sys", "exit"), ("os", "_exit"),
                                            ("os", "getenv")} and node.lineno not in allowed:
                    found.append(f"{f.value.id}.{f.attr}() at line {node.lineno}")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in {("os", "environ"), ("sys", "stdout"),
                                              ("sys", "stderr"), ("sys", "argv")}:
                found.append(f"{node.value.id}.{node.attr} at line {node.lineno}")
    return found


def test_library_files_exist() -> None:
    assert any(p.name == "repo.py" for p in LIBRARY_FILES)


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_only_cli_prints_exits_or_reads_environment(path: Path) -> None:
    assert _violations(path) == []


def test_the_check_itself_catches_a_print(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import sys, os\nprint('x')\nsys.exit(1)\nos.environ['A']\n"
                   "os._exit(0)  # allowed-exit: a forked child\n")
    assert len(_violations(bad)) == 3
