"""Each engine in its own process: the parent's ``EngineProcess`` and the worker it drives.

Protocol: the parent writes a job file (clips, threads, the engine's ``EngineSpec`` …) and starts
``python -m resonance.bench.worker JOB.json``. The worker loads the engine, runs the warm-up clips and
answers ``{"status": "ready"}``; then for each clip index read from stdin it answers ``{"ms", "text",
"tokens"}`` (and ``"stages"``, the runtime's own per-stage milliseconds); on "done" it answers ``{"status": "ok", "peak_rss_mb", "torch_loaded"}`` and exits. A worker that
dies is reported with its stderr's tail; exit status 2 (a ResonanceError, e.g. an engine not installed)
marks the engine skipped rather than failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from resonance import system
from resonance.bench.config import EngineSpec
from resonance.bench.engines import engine_module
from resonance.errors import ResonanceError

log = logging.getLogger(__name__)
CLIP_KEYS = ("ms", "text", "tokens", "stages")  # a clip's reply; the other replies' keys go into the result


class EngineProcess:
    """One engine in its own interpreter, driven one clip at a time over stdin; JSON lines come back."""

    def __init__(self, spec: EngineSpec, job: Dict[str, Any], work: Path) -> None:
        self.spec = spec
        self.result: Dict[str, Any] = {"latencies_ms": [], "texts": [], "tokens": []}
        job_file = work / f"job-{len(list(work.glob('job-*.json')))}.json"
        job_file.write_text(json.dumps({**job, "spec": asdict(spec)}, ensure_ascii=False), encoding="utf-8")
        self.stderr = job_file.with_suffix(".stderr.txt")
        threads = str(job["threads"])
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        cmd = [sys.executable, "-m", "resonance.bench.worker", str(job_file)]
        with open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env, text=True
            )
        self._receive()  # {"status": "ready", "library", "load_s"} once loaded and warmed up

    @property
    def ok(self) -> bool:
        return self.result.get("status") in ("ready", "ok")

    def transcribe(self, index: int) -> None:
        if self.ok and self._send(str(index)):
            reply = self._receive()
            if reply is not None:
                self.result["latencies_ms"].append(reply["ms"])
                self.result["texts"].append(reply["text"])
                self.result["tokens"].append(reply["tokens"])
                if "stages" in reply:
                    self.result.setdefault("stages", []).append(reply["stages"])

    def finish(self) -> Dict[str, Any]:
        if self.ok and self._send("done"):
            self._receive()  # {"status": "ok", "peak_rss_mb", "torch_loaded"}
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(BrokenPipeError):
                pipe.close()
        self.proc.wait()
        return self.result

    def _send(self, line: str) -> bool:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            return True
        except BrokenPipeError:
            self._receive()  # records why it died
            return False

    def _receive(self) -> Optional[Dict[str, Any]]:
        line = self.proc.stdout.readline()
        if line:
            reply = json.loads(line)
            self.result.update({k: v for k, v in reply.items() if k not in CLIP_KEYS})
            return reply
        code = self.proc.wait()
        # Exit 2 is a ResonanceError (e.g. faster-whisper not installed): the engine is skipped, with the reason.
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        tail = self.stderr.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-12:]
        self.result.update(status="skipped" if code == 2 else "failed", error="\n".join([*tail, how]))
        log.warning("%s %s:\n%s", self.spec.label, self.result["status"], self.result["error"])
        return None


def run_engines(
    specs: Sequence[EngineSpec], job: Dict[str, Any], n_clips: int, interleave: bool, work: Path
) -> List[Tuple[EngineSpec, Dict[str, Any]]]:
    """Every engine over every clip; interleaved: loaded one by one, then clip i on each engine in turn
    (starting with a different engine each time), so slow spells of the machine hit all of them alike."""
    if not interleave:
        results = []
        for i, spec in enumerate(specs):
            log.info("[%d/%d] %s ...", i + 1, len(specs), spec.label)
            engine = EngineProcess(spec, job, work)
            for clip in range(n_clips):
                engine.transcribe(clip)
            results.append((spec, engine.finish()))
        return results
    engines = []
    for i, spec in enumerate(specs):
        log.info("[%d/%d] loading %s ...", i + 1, len(specs), spec.label)
        engines.append(EngineProcess(spec, job, work))
    log.info("timing %d clips on %d engines in turn ...", n_clips, len(engines))
    for clip in range(n_clips):
        for k in range(len(engines)):
            engines[(clip + k) % len(engines)].transcribe(clip)
    return [(engine.spec, engine.finish()) for engine in engines]


# ----------------------------------------------------------------------------------------------------------
# Inside the engine's process


def worker(job: Dict[str, Any], commands: Iterable[str], send: Callable[[Dict[str, Any]], None]) -> None:
    """Load, warm up, say ready; then time each clip index read from ``commands`` until "done"; last,
    report the peak RSS (everything before counts)."""
    from resonance.audio import load_audio

    audios = [load_audio(path) for path in job["clips"]]
    started = time.perf_counter()
    transcribe, library = engine_module(job["spec"]["engine"]).load(job)
    load_s = round(time.perf_counter() - started, 2)
    for audio in audios[: job["warmup"]]:
        transcribe(audio)
    send({"status": "ready", "library": library, "load_s": load_s})
    for command in commands:
        if command.strip() == "done":
            break
        audio = audios[int(command)]
        t0 = time.perf_counter()
        text, n, *stages = transcribe(audio)
        reply = {"ms": round((time.perf_counter() - t0) * 1000.0, 2), "text": text, "tokens": n}
        send({**reply, "stages": stages[0]} if stages else reply)
    # the runtime's RSS must not include torch: say whether this process loaded it
    send({"status": "ok", "torch_loaded": "torch" in sys.modules, "peak_rss_mb": round(peak_rss_mb(), 1)})


def peak_rss_mb() -> float:
    """This process's peak resident set since it started (exec), in MB.

    Linux: VmHWM (resonance/system.py says why not ru_maxrss); elsewhere ru_maxrss, the best there is.
    """
    own = system.peak_rss_mb("self")
    if own is not None:
        return own
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m resonance.bench.worker JOB.json``: clip indices in on stdin, JSON lines out on stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m resonance.bench.worker JOB.json (internal; use `resonance bench`)")
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # libraries print (and C++ code writes to fd 1): keep the real stdout for our JSON lines

    def send(message: Dict[str, Any]) -> None:
        results.write(json.dumps(message, ensure_ascii=False) + "\n")
        results.flush()

    try:
        worker(json.loads(Path(args[0]).read_text(encoding="utf-8")), sys.stdin, send)
    except ResonanceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
