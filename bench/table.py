"""The report as text (table.txt, and what `resonance bench` prints): one section after another.

Adding a table: a function ``report -> lines`` here, and its place in ``SECTIONS``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from resonance.bench.config import GENERIC, PERSONAL

Report = Dict[str, Any]
TABLE_TITLES = {
    PERSONAL: "the personal model: every engine on the same merged weights at the same window",
    GENERIC: "the generic model at its stock window, as each engine runs it out of the box",
}


def format_table(report: Report) -> str:
    return "\n".join(line for section in SECTIONS for line in section(report))


def title(report: Report) -> List[str]:
    clips = report["clips"]
    seconds = [c["seconds"] for c in clips]
    return [
        f"resonance bench: {report['model']}",
        f"{len(clips)} clips from {report['data']} ({min(seconds):.1f}-{max(seconds):.1f} s, "
        f"{report['audio_seconds']:.0f} s in all), {report['threads']} threads per engine, "
        f"{report['warmup_clips']} warm-up clip(s) not counted; CPU: {report['machine']['cpu']}",
        f"CPU flags: {' '.join(report['machine'].get('cpu_flags') or ['unknown'])}; load average "
        f"{report['machine']['load_before']} before, {report['machine']['load_after']} after",
        "",
    ]


def engines(report: Report) -> List[str]:
    """One table per model (personal, generic), each row's speed-ups against its own table's references."""
    lines: List[str] = []
    for table in (PERSONAL, GENERIC):
        rows = [r for r in report["engines"] if r.get("table", GENERIC) == table]
        if rows:
            lines += [*([""] if lines else []), f"{TABLE_TITLES[table]}:", *engine_table(rows)]
    lines.append(
        "x ...: p50 of the reference in the same table / p50 of the engine (above 1 = faster); CT2-int8: "
        "CTranslate2 int8 (faster-whisper's engine); RTF: compute s per audio s"
    )
    floor = report.get("floor")
    if floor:
        p = floor["peaks"]
        lines.append(
            f"x floor: p50 / the least time this CPU needs for the row's matrix products and weight reads "
            f"(bench/floor.py), measured here on {p['threads']} threads: {p['gemm_fp32_gflops']} GFLOP/s fp32, "
            f"{p['gemm_int8_gops']} GOP/s int8, {p['bandwidth_gbs']} GB/s"
        )
    return lines


def engine_table(rows: List[Dict[str, Any]]) -> List[str]:
    header = (
        f"{'engine':<30}{'prec':<6}{'window':<12}{'p50 ms':>8}{'p90 ms':>8}{'x PyTorch':>11}{'x CT2-int8':>11}"
        f"{'RTF':>8}{'peak RSS':>10}{'CER':>8}{'tok/clip':>9}{'x floor':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        head = f"{r['label'][:29]:<30}{r['precision']:<6}{r['window']:<12}"
        if r.get("status") != "ok":
            lines.append(head + f"{r.get('status')}: {(r.get('error') or '').splitlines()[-1][:70]}")
            continue
        cer = "-" if r["cer"] is None else f"{100 * r['cer']:.1f}%"
        lines.append(
            head + f"{r['p50_ms']:>8.0f}{r['p90_ms']:>8.0f}{_x(r['speedup_vs_pytorch']):>11}"
            f"{_x(r['speedup_vs_fw_int8']):>11}{r['rtf']:>8.3f}{r['peak_rss_mb']:>7.0f} MB{cer:>8}"
            f"{r['tokens_per_clip']:>9.1f}{_x(r.get('x_floor')):>9}"
        )
    return lines


def stages(report: Report) -> List[str]:
    """Where the runtime's time goes, per bundle (p50 of each stage over the clips)."""
    lines = []
    for r in report["engines"]:
        st = r.get("stages_p50")
        if st and not r["phrases"]:
            lines.append(
                f"stages {r['label']}: features {st.get('features_ms', 0):.1f} ms, encoder "
                f"{st.get('encoder_ms', 0):.1f} ms, decoder {st.get('decoder_ms', 0):.1f} ms = "
                f"{st['decoder_ms_per_step']:.1f} ms per step (p50 each)"
            )
    return lines


def phrase_board(report: Report) -> List[str]:
    return [
        f"phrase board: {r['label']}: mode=both with {len(r['phrases'])} phrases, p50 {r['p50_ms']:.0f} ms "
        f"= {r['both_vs_free']:.2f}x the same bundle's mode=free"
        for r in report["engines"]
        if r.get("both_vs_free") is not None
    ]


def server(report: Report) -> List[str]:
    lines = []
    for s in report["server"]:
        if "error" in s:
            lines.append(f"server {s['label']}: failed: {s['error'].splitlines()[0][:100]}")
            continue
        lines.append(
            f"server {s['label']}: POST /transcribe of a {s['wav_seconds']:g} s WAV over loopback: p50 "
            f"{s['http_p50_ms']:.0f} ms (p90 {s['http_p90_ms']:.0f}) vs {s['in_process_p50_ms']:.0f} ms in-process "
            f"-> HTTP + upload cost {s['overhead_ms']:.0f} ms; server peak RSS {s['server_peak_rss_mb']} MB"
        )
    return lines


def notes(report: Report) -> List[str]:
    return [f"note: {n}" for n in report["notes"]]


SECTIONS = (title, engines, stages, phrase_board, server, notes)


def _x(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}x"
