"""resonance/progress.py: the bar over items (tqdm, or a text line without it) and the numbered, timed steps."""

from __future__ import annotations

import io

from resonance.progress import Stages, progress


def test_without_tqdm_a_line_says_how_far_and_how_long():
    out = io.StringIO()
    assert list(progress(range(3), "converting", unit="recording", stream=out, use_tqdm=False)) == [0, 1, 2]
    assert out.getvalue().startswith("converting: 3/3 recordings in ")
    out = io.StringIO()
    assert list(progress(iter("ab"), "parity", unit="clip", stream=out, use_tqdm=False)) == ["a", "b"]
    assert out.getvalue().startswith("parity: 2 clips in ")  # no length known: a count


def test_with_tqdm_a_bar_on_the_given_stream():
    out = io.StringIO()
    assert list(progress([1, 2], "converting", unit="recording", stream=out)) == [1, 2]
    assert "converting" in out.getvalue() and "2/2" in out.getvalue()


def test_stages_are_numbered_and_timed_and_silent_when_off():
    out = io.StringIO()
    stages = Stages("export", 2, stream=out)
    stages.start("one")
    stages.start("two")
    stages.done("bundles/p1")
    lines = out.getvalue().splitlines()
    assert lines[0] == "export [1/2] one ..."
    assert lines[1].startswith("export [1/2] one: ") and lines[1].endswith(" s")
    assert lines[2] == "export [2/2] two ..."
    assert lines[-1].startswith("export done in ") and lines[-1].endswith(": bundles/p1")
    quiet = io.StringIO()
    off = Stages("export", 1, stream=quiet, enabled=False)
    off.start("one")
    off.done()
    assert quiet.getvalue() == ""
