"""`workbench --help` and every command's --help: no heavy imports, every flag described, defaults shown."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.cli import COMMANDS, build_parser

HEAVY = ("torch", "transformers", "transformer_lens", "altair", "pandas", "numpy", "sae_lens", "triton")
REPO = Path(__file__).resolve().parents[2]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def flag_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text of one flag as --help prints it, with line breaks undone."""
    return " ".join(parser._get_formatter()._format_action(action).split())


def test_help_imports_no_heavy_module(tmp_path):
    """Building the parser and printing every command's help leaves torch, pandas, altair, ... unimported."""
    script = f"""
import contextlib, io, json, sys
from workbench.cli import COMMANDS, main
for argv in [["--help"]] + [[name, "--help"] for name in COMMANDS]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(argv)
print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_console_help_lists_every_command():
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert all(name in proc.stdout for name in COMMANDS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_flag_is_described_and_shows_its_default(name):
    parser = subparsers()[name]
    assert parser.description, f"{name} --help says nothing about the command"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = flag_help(parser, action)
        label = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{name} {label} has no description"
        # Flags without a value (--json, --resume, ...) are off unless given; None means "described in words".
        if action.nargs != 0 and action.default is not None and action.default is not argparse.SUPPRESS:
            assert f"(default: {action.default})" in text, f"{name} {label}: default not shown: {text}"
    parser.format_help()  # renders (a stray % in a help text would raise here)


def test_tokens_help_says_what_each_command_does_with_n():
    parsers = subparsers()
    texts = {
        name: flag_help(p, next(a for a in p._actions if a.dest == "tokens"))
        for name, p in parsers.items()
        if any(a.dest == "tokens" for a in p._actions)
    }
    assert "exactly N tokens" in texts["capture"] and "cut short" in texts["capture"]
    for name, text in texts.items():
        assert "whole windows)" not in text  # the old wording, wrong for capture
        if name != "capture":
            assert "rounded up to whole --context windows" in text, (name, text)
    assert "--batch-tokens" in texts["transcoder"] and "2000000" in texts["transcoder"]
    assert "first --batch-size windows" in texts["bench"] and "(default: 4096)" in texts["bench"]
    assert "(default: 512)" in texts["replay"] and "(default: 1024)" in texts["finercut"]


def test_help_and_commands_point_to_the_projects_own_docs():
    """No help text or command module cites the design notes outside the repository (users never see them)."""
    sources = [REPO / "workbench" / "cli.py", *sorted((REPO / "workbench" / "commands").glob("*.py"))]
    helps = [p.format_help() for p in subparsers().values()]
    for text in helps + [path.read_text() for path in sources]:
        assert not any(doc in text for doc in tuple(s + ".md" for s in ("PAPERS", "ENVIRONMENT", "DESIGN")))
    assert any("docs/methods.md" in text for text in helps)
