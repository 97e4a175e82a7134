"""The README's Python code runs as written (in a scratch folder), so it cannot rot."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_python_code():
    assert python_blocks()


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the snippets write runs/ relative to the working directory
    code = python_blocks()[index]
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})


def workbench_commands() -> list[str]:
    """Every `workbench ...` command line of the README's shell blocks, continuation lines joined."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```\n(.*?)```", readme, flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if re.match(r"\s*workbench\s", line) and "..." not in line]


@pytest.mark.parametrize("line", workbench_commands())
def test_readme_command_lines_parse(line, capsys):
    """Each documented command names flags and values that the CLI accepts (parsed, not run)."""
    from workbench.cli import build_parser

    argv = shlex.split(line, comments=True)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exit:
        pytest.fail(f"`{line}` does not parse: {capsys.readouterr().err.strip()} (exit {exit.code})")
