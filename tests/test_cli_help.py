"""Every `resonance` command explains itself: worked examples and a help text for every option."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from resonance.cli import build_parser


def _commands(
    parser: argparse.ArgumentParser, path: str = "resonance"
) -> Iterator[tuple[str, argparse.ArgumentParser, bool]]:
    """(command line, parser, whether it is a leaf) for the parser and every nested subcommand."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    yield path, parser, not groups
    for group in groups:
        for name, child in group.choices.items():
            yield from _commands(child, f"{path} {name}")


def _says_something(help: str | None) -> bool:
    """A help text that explains more than its default: " (default: 16)" alone does not."""
    return bool(re.sub(r"\(default[^)]*\)", "", help or "").strip())


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """Options, positionals and listed subcommands without a help (-h and hidden --no-x pairs excepted)."""
    blank = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            blank += [choice.dest for choice in action._choices_actions if not _says_something(choice.help)]
        elif not _says_something(action.help):
            blank.append("/".join(action.option_strings) or action.dest)
    return blank


def test_every_command_and_group_has_examples_and_every_option_has_help():
    problems = []
    commands = list(_commands(build_parser()))
    for path, parser, _leaf in commands:
        # every command and every group (`resonance data`, `resonance eval` …); the top level lists the pipeline
        if path != "resonance" and "examples:" not in parser.format_help():
            problems.append(f"{path}: no examples in --help")
        problems += [f"{path}: {name} has no help" for name in _undocumented(parser)]
    assert not problems, "\n".join(problems)
    leaves = {path for path, _, leaf in commands if leaf}
    assert {"resonance train", "resonance data check", "resonance model import-ct2"} <= leaves
    assert {"resonance eval curve", "resonance eval phrases", "resonance phrases add"} <= leaves
    groups = {path for path, _, leaf in commands if not leaf}
    assert groups == {"resonance", "resonance data", "resonance model", "resonance eval", "resonance phrases"}


def test_a_group_alone_shows_its_actions_and_examples(capsys):
    from resonance.cli import main

    assert main(["eval"]) == 1
    shown = capsys.readouterr().out
    assert "curve" in shown and "phrases" in shown and "examples:" in shown


def test_train_help_has_no_empty_defaults():
    parser = {path: p for path, p, _ in _commands(build_parser())}["resonance train"]
    text = " ".join(parser.format_help().split())  # argparse wraps lines anywhere
    assert "(default: )" not in text and "(default: None)" not in text


def test_make_serve_without_a_models_folder_says_how_to_name_one(tmp_path):
    """`make serve` on a fresh clone has no bundles/: the hint speaks make (MODELS=...), not only the CLI."""
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[1]
    missing = tmp_path / "no-bundles"
    # A venv not installed yet, whose install would fail at once (PYTHON=false): the check comes first.
    venv = tmp_path / "venv"
    make = [
        "make",
        "-s",
        "serve",
        f"MODELS={missing}",
        f"VENV={venv}",
        f"STAMP={venv}/.stamp",
        "PYTHON=false",
    ]
    proc = subprocess.run(make, cwd=root, capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"no models folder '{missing}'" in proc.stderr and "make serve MODELS=" in proc.stderr
    assert not venv.exists()  # answered before any install


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`resonance data check DIR | head -1` printed a BrokenPipeError traceback once head had its line."""
    from helpers import DEMO_DATA

    from resonance.runtime.service import resonance_command

    proc = subprocess.Popen(
        [*resonance_command(), "data", "check", str(DEMO_DATA / "take1")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # the reader is gone before the command writes its report
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(monkeypatch):
    """A socket's peer going away (a server, `resonance probe`) is a real error: only a closed stdout is quiet."""
    from resonance import cli

    def socket_peer_gone(argv):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_main", socket_peer_gone)
    with pytest.raises(BrokenPipeError):
        cli.main([])


def test_example_commands_are_spaced_as_typed():
    """A `\\` at a line's end in a help string must reach the screen: unescaped, Python joins the lines and
    the command shows a run of spaces where the line broke."""
    runs = []
    for path, parser, _ in _commands(build_parser()):
        for line in (parser.epilog or "").splitlines():
            command = re.split(r"\s+# ", line)[0].strip()  # the aligned comment may follow a run of spaces
            if line.startswith("  ") and "  " in command:
                runs.append(f"{path}: {line}")
    assert not runs, "\n".join(runs)
