"""The data-safety probe (issue #12): it runs the clumsy commands for real and counts the user's bytes."""

from __future__ import annotations

import os
import stat

import pytest

from resonance.data.safety_probe import CASES, format_table, main, run_safety_probe

FAST = ["train into the data folder", "data convert over recorded takes", "data record into a dataset"]


def test_fast_cases_lose_nothing_and_say_what_to_do(tmp_path):
    results = run_safety_probe(tmp_path, names=FAST)
    assert [r.name for r in results] == [c.name for c in CASES if any(n in c.name for n in FAST)]
    assert all(r.bytes_before > 1_000_000 and r.bytes_lost == 0 for r in results)
    by_name = {r.name.split(",")[0]: r for r in results}
    assert by_name["train into the data folder"].exit_code == 2
    assert "is the data folder" in by_name["train into the data folder"].message
    assert by_name["data convert over recorded takes"].exit_code == 2
    assert by_name["data record into a dataset with extra keys"].exit_code == 0  # added a take, kept the rest
    assert format_table(results).endswith("3 cases, 0 bytes of user data lost")


@pytest.mark.skipif(os.name == "nt", reason="a shell script stands in for the Python interpreter")
def test_the_probe_counts_what_a_careless_command_deletes(tmp_path):
    """A `resonance` that deletes its --data folder: the probe must see the loss (and exit 1)."""
    careless = tmp_path / "careless-python"
    careless.write_text(
        '#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = "--data" ] && rm -rf "$2"; shift; done\n',
        encoding="utf-8",
    )
    careless.chmod(careless.stat().st_mode | stat.S_IEXEC)
    (result,) = run_safety_probe(tmp_path / "s", python=str(careless), names=["train into the data folder"])
    assert result.bytes_lost == result.bytes_before > 0
    code = main(["--python", str(careless), "--cases", "train into the data folder"])
    assert code == 1


def test_the_probe_imports_no_layer_above_data():
    """It drives train/export through the command line only, so it can live in the data layer and run another
    installation's `resonance` (--python)."""
    import ast
    from pathlib import Path

    import resonance.data.safety_probe as probe

    tree = ast.parse(Path(probe.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not {name for name in imported if name.startswith("resonance")}
