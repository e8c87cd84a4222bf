"""Benchmark layer (resonance.bench): `resonance bench`, our runtime against PyTorch, Optimum and
faster-whisper on the same clips, threads and machine. Beside export/, not part of it: it uses every layer
and none uses it.

Fairness rules (each one is a way benchmarks usually lie):

* every engine runs in its **own subprocess** (worker.py), loads there and reports its own peak RSS at the
  end, so the torch that PyTorch loads never counts against the runtime, which does not import it;
* every engine gets the **same clips**, already decoded to float32 16 kHz arrays (file decoding is not
  timed; features are), the **same thread count** and the **same token cap** per clip (the runtime's
  ``6 tokens/s + 8``), greedy decoding, language forced;
* the first ``warmup`` clips run once, untimed, before the timed pass (first calls allocate and plan);
* engines are loaded together and take turns clip by clip, so load from other processes hits all alike;
* faster-whisper runs with ``beam_size=1``, no VAD and one temperature (its fallback would re-decode);
* with a personal bundle, every baseline also runs the **same model at the same window** (the adapter merged
  and cut as export does): the personal table; the generic model at 30 s is a table of its own, and ratios
  are only taken within a table.

``random_size="small"`` (``--model-size small``) times a randomly initialised Whisper-small: latency does not
depend on the weights once every engine decodes the same number of text tokens (EOT and every special id
above it masked, as the runtime always does); CER is meaningless there and is not reported.

The server is measured end to end too (server_timing.py).

Modules, in the order a run uses them::

    config.py         BenchConfig (what the user asks), EngineSpec (a table row), Clip, ModelFiles
    models.py         the base model, bundles, random model and personal (merged, windowed) model every
                      engine's files come from
    floor.py          the model's matrix work and weight reads, this CPU's measured peaks: the floor
    engines/          one module per engine: its rows and model files (parent), its loader (worker)
    worker.py         each engine in its own process, driven clip by clip
    server_timing.py  `resonance serve` on loopback vs the same bundle in-process
    report.py         rows, speed-ups, machine and notes as one JSON-able report
    table.py, chart.py  table.txt and bench.png
    run.py            run_bench: all of the above, top to bottom
    cli.py            `resonance bench`

Public API (imported on first use)::

    from resonance.bench import BenchConfig, run_bench, format_table
"""

from __future__ import annotations

from resonance.lazy import lazy_exports

_EXPORTS = {
    "BenchConfig": "resonance.bench.config",
    "run_bench": "resonance.bench.run",
    "format_table": "resonance.bench.table",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
