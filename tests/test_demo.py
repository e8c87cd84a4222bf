"""`resonance demo`, the README's main command, end to end on the tiny random Whisper (the real one is slow)."""

from __future__ import annotations

import json
import re


def test_demo_runs_the_whole_chain(run_cli, tiny_whisper, tmp_path):
    workdir = tmp_path / "demo"
    proc = run_cli(
        "demo", "--base-model", tiny_whisper, "--epochs", "1", "--quantize", "none", "--workdir", workdir
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for stage in ("1/5 base model", "2/5 fine-tune", "3/5 export", "4/5 serve", "5/5 transcribe"):
        assert stage in proc.stdout
    # A row per clip for the first ten take2 clips, each answered by the server over HTTP.
    assert len(re.findall(r"\(\d+ ms\)$", proc.stdout, re.MULTILINE)) == 10
    summary = re.search(
        r"CER on take2: generic ([\d.]+) -> personalised ([\d.]+) .* ([\d.]+) \(ONNX", proc.stdout
    )
    assert summary, proc.stdout
    report = json.loads((workdir / "adapters" / "demo" / "report.json").read_text(encoding="utf-8"))
    assert float(summary.group(1)) == round(report["cer_before"], 3)
    assert (workdir / "bundles" / "demo" / "manifest.json").is_file()
