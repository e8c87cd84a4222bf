"""`resonance bench` on the tiny random Whisper: one row per engine, real measurements, the table and the files.

Latency targets live in the benchmark's output, never here: these tests check that the bench measures what
it says (each engine in its own process, the same clips, fixed decode lengths, the server end to end).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from helpers import random_lora_adapter

from resonance.errors import ResonanceError

DEMO_TAKE2 = Path(__file__).resolve().parents[1] / "resonance" / "demo_data" / "take2"


def run_bench_cli(*argv) -> int:
    """`resonance bench ...` through the command's own parser (its registration, defaults and run)."""
    from resonance.bench import cli as bench_cli

    parser = argparse.ArgumentParser(prog="resonance")
    bench_cli.register(parser.add_subparsers())
    args = parser.parse_args(["bench", *map(str, argv)])
    return args.run(args)


def test_bench_measures_every_engine_on_the_same_clips(tiny_whisper, tiny_bundle, tmp_path, capsys):
    pytest.importorskip("faster_whisper", reason="faster-whisper (the [dev] extra) is not installed")
    from resonance.train.evaluate import cer

    engines = ["runtime", "pytorch", "faster-whisper-int8"]
    out = tmp_path / "bench"
    code = run_bench_cli(
        "--bundle", tiny_bundle, "--base-model", tiny_whisper, "--data", DEMO_TAKE2, "--clips", 2,
        "--threads", 1, "--warmup", 1, "--engines", ",".join(engines), "--server-requests", 2, "--out", out,
        "--phrase-list", 20,
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    report = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    rows = {row["engine"]: row for row in report["engines"] if not row["phrases"]}
    assert sorted(rows) == sorted(engines) and len(report["engines"]) == len(engines) + 1
    # the runtime again with the phrase board (mode=both, 20 phrases): the same free text, its cost beside it
    (both,) = [row for row in report["engines"] if row["phrases"]]
    assert both["engine"] == "runtime" and len(both["phrases"]) == 20 and both["status"] == "ok"
    assert both["texts"] == rows["runtime"]["texts"]
    assert both["both_vs_free"] == round(both["p50_ms"] / rows["runtime"]["p50_ms"], 2)
    assert f"mode=both with 20 phrases, p50 {both['p50_ms']:.0f} ms" in printed
    references = [clip["text"] for clip in report["clips"]]
    assert len(references) == 2
    for row in rows.values():
        assert row["status"] == "ok", row.get("error")
        assert len(row["latencies_ms"]) == 2 and min(row["latencies_ms"]) > 0
        assert 0 < row["p50_ms"] <= row["p90_ms"]
        assert row["rtf"] > 0 and row["peak_rss_mb"] > 0
        # CER with training's normalisation, over exactly the timed clips
        assert row["cer"] == round(cer(references, row["texts"]), 4)
        assert row["label"] in printed
    assert rows["pytorch"]["speedup_vs_pytorch"] == 1.0
    assert rows["faster-whisper-int8"]["speedup_vs_fw_int8"] == 1.0
    # Each engine's memory is its own: the runtime never loads torch, so it peaks below the PyTorch process.
    assert rows["runtime"]["torch_loaded"] is False and rows["pytorch"]["torch_loaded"] is True
    assert rows["runtime"]["peak_rss_mb"] < rows["pytorch"]["peak_rss_mb"]

    (server,) = report["server"]
    assert server["requests"] == 2 and server["http_p50_ms"] > 0 and server["in_process_p50_ms"] > 0
    assert server["text"] == server["in_process_text"]  # the same bundle and WAV over HTTP and in-process
    assert "POST /transcribe" in printed and "p50 ms" in printed
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "table.txt").read_text(encoding="utf-8").startswith("resonance bench:")

    with pytest.raises(ResonanceError, match="already exists"):
        run_bench_cli("--bundle", tiny_bundle, "--out", out, "--engines", "runtime")


@pytest.fixture(scope="module")
def personal_bundle(tiny_whisper, tmp_path_factory) -> Path:
    """A personal bundle as `resonance export --adapter` makes it: a LoRA adapter (non-zero, so merging
    changes the model) trained at a 5 s window, exported fp32; its manifest names the adapter folder."""
    from transformers import WhisperProcessor

    from resonance.export.onnx_export import export_bundle

    adapter = random_lora_adapter(
        tiny_whisper, tmp_path_factory.mktemp("adapter-5s"), seed=2, window_seconds=5.0
    )
    WhisperProcessor.from_pretrained(tiny_whisper).save_pretrained(adapter)
    return export_bundle(None, tmp_path_factory.mktemp("bundles") / "p5", adapter=adapter)


def test_personal_bundles_are_timed_against_every_engine_on_the_same_model_and_window(
    personal_bundle, tiny_whisper, tmp_path
):
    """Issue #18: the personal table runs PyTorch, Optimum and CTranslate2 on the bundle's own merged weights
    at its 5 s window (not the generic model at 30 s), each table's ratios against its own PyTorch."""
    pytest.importorskip("faster_whisper", reason="faster-whisper (the [dev] extra) is not installed")
    from resonance.bench import BenchConfig, format_table, run_bench
    from resonance.runtime.bundle import load_manifest

    adapter = load_manifest(personal_bundle, verify=False).adapter
    config = BenchConfig(
        bundles=(personal_bundle,),
        base_model=str(tiny_whisper),
        data=DEMO_TAKE2,
        clips=2,
        threads=1,
        warmup=0,
        engines=("runtime", "pytorch", "optimum", "faster-whisper-fp32"),
        server_requests=0,
        phrase_list=0,
        out=tmp_path / "bench",
    )
    report = run_bench(config)  # the adapter comes from the bundle's manifest
    assert report["personal_adapter"] == adapter
    rows = {(row["table"], row["engine"]): row for row in report["engines"]}
    personal = ("runtime", "pytorch", "optimum", "faster-whisper-fp32")
    assert sorted(rows) == sorted(
        [*(("personal", e) for e in personal), *(("generic", e) for e in personal[1:])]
    )
    for (table, engine), row in rows.items():
        assert row["status"] == "ok", row.get("error")
        assert row["window"] == ("5 s" if table == "personal" else "30 s"), (table, engine)
    # faster-whisper pads to 30 s: on the 5 s model CTranslate2 runs on its own
    assert rows["personal", "faster-whisper-fp32"]["label"] == "CTranslate2 fp32"
    assert rows["generic", "faster-whisper-fp32"]["label"] == "faster-whisper fp32"
    # the same merged weights: fp32 engines agree token for token with the runtime's PyTorch reference
    reference = rows["personal", "pytorch"]["texts"]
    assert rows["personal", "optimum"]["texts"] == reference
    assert rows["personal", "faster-whisper-fp32"]["texts"] == reference
    assert reference != rows["generic", "pytorch"]["texts"]  # the adapter changed the model
    for table in ("personal", "generic"):
        pytorch_p50 = rows[table, "pytorch"]["p50_ms"]
        for (t, _engine), row in rows.items():
            if t == table:
                assert row["speedup_vs_pytorch"] == round(pytorch_p50 / row["p50_ms"], 2)
    # each row as a multiple of this CPU's floor for its own window, precision and decoder steps
    peaks = report["floor"]["peaks"]
    assert peaks["gemm_fp32_gflops"] > 0 and peaks["gemm_int8_gops"] > 0 and peaks["bandwidth_gbs"] > 0
    for row in rows.values():
        assert row["x_floor"] == round(row["p50_ms"] / row["floor_ms"], 2) and row["floor_ms"] > 0
    assert rows["personal", "pytorch"]["floor_ms"] != rows["generic", "pytorch"]["floor_ms"]
    printed = format_table(report)
    assert "the personal model: every engine on the same merged weights at the same window" in printed
    assert "the generic model at its stock window" in printed
    assert report["machine"]["cpu_flags"] is not None and "CPU flags:" in printed


def test_random_weights_decode_a_fixed_number_of_tokens(tiny_whisper, tiny_bundle, tmp_path, monkeypatch):
    """--model-size small's mode, on the tiny size: every engine decodes exactly --decode-steps; no CER."""
    pytest.importorskip("faster_whisper", reason="faster-whisper (the [dev] extra) is not installed")
    from resonance.bench import BenchConfig, format_table, run_bench

    monkeypatch.setenv("RESONANCE_CACHE", str(tmp_path / "cache"))  # the random model and its exports
    engines = ("runtime", "pytorch", "optimum", "faster-whisper-int8")
    config = BenchConfig(
        bundles=(tiny_bundle,),
        base_model=str(tiny_whisper),
        clips=2,
        threads=1,
        warmup=1,
        random_size="tiny",
        decode_steps=5,
        engines=engines,
        server_requests=0,
        phrase_list=0,
        interleave=False,  # the one-engine-at-a-time path (--one-at-a-time)
        out=tmp_path / "bench",
    )
    report = run_bench(config)
    assert report["random_weights"] is True and report["server"] == []
    assert [row["engine"] for row in report["engines"]] == list(engines)
    for row in report["engines"]:
        assert row["status"] == "ok", row.get("error")
        assert row["tokens"] == [5, 5], row["label"]  # EOT can't end decoding early
        assert row["cer"] is None
    assert "RANDOM weights, 5 decode steps" in format_table(report)


def test_the_floor_counts_the_models_work_and_the_slower_of_compute_and_memory():
    from resonance.bench.floor import floor_ms, model_work

    base = {  # whisper-base's config.json
        "d_model": 512, "encoder_layers": 6, "decoder_layers": 6, "encoder_ffn_dim": 2048,
        "decoder_ffn_dim": 2048, "num_mel_bins": 80, "vocab_size": 51865,
    }  # fmt: skip
    five, thirty = model_work(base, 5.0), model_work(base, 30.0)
    assert 10.0e9 < five["encoder_flops"] < 11.0e9  # the "about 10 GFLOP for a 5 s window"
    assert thirty["encoder_flops"] > 6 * five["encoder_flops"]  # attention grows with the square
    assert 48e6 < five["step_weights"] < 49e6  # 22M decoder weights + the 26.6M vocabulary projection
    peaks = {"gemm_fp32_gflops": 100.0, "gemm_int8_gops": 400.0, "bandwidth_gbs": 10.0}
    once = (five["encoder_flops"] + five["cross_kv_flops"]) / 100e9 * 1000
    # fp32 steps read 4 bytes a weight: memory-bound at 10 GB/s (19.4 ms a step vs 1 ms of FLOPs)
    assert floor_ms(five, "fp32", 10, peaks) == pytest.approx(
        once + 10 * five["step_weights"] * 4 / 10e9 * 1000
    )
    assert floor_ms(five, "int8", 10, peaks) < floor_ms(five, "fp32", 10, peaks) / 3
    fast_memory = {**peaks, "bandwidth_gbs": 1000.0}  # then the step's FLOPs bound it
    assert floor_ms(five, "fp32", 1, fast_memory) == pytest.approx(
        once + 2 * five["step_weights"] / 100e9 * 1000
    )


def test_phrase_board_of_a_given_length_from_known_phrases():
    from resonance.bench.engines.runtime import phrase_board

    board = phrase_board(["我想喝水", "帮我开灯", "我想喝水", ""], 10)
    assert len(board) == len(set(board)) == 10
    assert board[:2] == ("我想喝水", "帮我开灯") and "请我想喝水" in board and "帮我开灯吧" in board
    assert phrase_board(["一", "二", "三"], 2) == ("一", "二")


def test_bad_settings_are_refused_before_any_work(tmp_path):
    from resonance.bench import BenchConfig

    with pytest.raises(ResonanceError, match="unknown engine"):
        BenchConfig(engines=("pytorch", "whisper.cpp"))
    with pytest.raises(ResonanceError, match="needs a bundle"):
        BenchConfig(engines=("runtime",))
    with pytest.raises(ResonanceError, match="at least 1"):
        BenchConfig(bundles=(tmp_path,), clips=0)
    with pytest.raises(ResonanceError, match="not both"):
        BenchConfig(bundles=(tmp_path,), adapter=tmp_path, random_size="small")


def test_a_personal_table_without_a_personal_model_is_refused(tiny_bundle, tiny_whisper, tmp_path):
    from resonance.bench import BenchConfig, run_bench

    config = BenchConfig(  # tiny_bundle is generic: no adapter, so no personal row
        bundles=(tiny_bundle,), base_model=str(tiny_whisper), engines=("runtime",), tables=("personal",),
        floor=False, server_requests=0, phrase_list=0, out=tmp_path / "bench",
    )  # fmt: skip
    with pytest.raises(ResonanceError, match="nothing to time in the personal table"):
        run_bench(config)
    with pytest.raises(ResonanceError, match="unknown table"):
        BenchConfig(bundles=(tmp_path,), tables=("fair",))


def test_bench_never_writes_onto_what_it_measures_or_a_users_folder(tiny_bundle, tmp_path):
    """Refused before any work (issue #12): --out onto a bundle, around the data, or over another folder."""
    from resonance.bench import BenchConfig
    from resonance.bench.run import run_bench

    engines = ("runtime",)
    with pytest.raises(ResonanceError, match="is the bundle"):
        run_bench(BenchConfig(bundles=(tiny_bundle,), engines=engines, out=tiny_bundle, force=True))
    with pytest.raises(ResonanceError, match="holds the data folder"):
        run_bench(
            BenchConfig(bundles=(tiny_bundle,), data=DEMO_TAKE2, engines=engines, out=DEMO_TAKE2.parent)
        )
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ResonanceError, match=r"not a benchmark folder made by resonance .*bench\.json"):
        run_bench(BenchConfig(bundles=(tiny_bundle,), engines=engines, out=tmp_path, force=True))
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_an_engine_that_cannot_start_is_reported_not_fatal(tmp_path):
    from resonance.bench.config import EngineSpec
    from resonance.bench.engines import RUNTIME
    from resonance.bench.worker import run_engines

    clip = str(DEMO_TAKE2 / "audio" / "0035_是的.wav")
    job = {
        "clips": [clip],
        "threads": 1,
        "warmup": 0,
        "fixed_steps": None,
        "vocab_size": 51865,
        "language": "zh",
    }
    broken = EngineSpec(RUNTIME, "runtime missing", str(tmp_path / "no-bundle"), "fp32", "30 s")
    ((spec, result),) = run_engines([broken], job, n_clips=1, interleave=True, work=tmp_path)
    assert spec is broken
    assert result["status"] == "skipped" and "manifest.json" in result["error"]  # the runtime's own message
    assert result["latencies_ms"] == []
