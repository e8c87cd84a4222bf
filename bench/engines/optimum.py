"""The Optimum baseline: Optimum's own ONNX export run by ``ORTModelForSpeechSeq2Seq``, as its users run it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from resonance.bench.config import GENERIC, PERSONAL, EngineSpec, ModelFiles
from resonance.bench.engines import OPTIMUM
from resonance.bench.engines.common import Transcribe, hf_generate

log = logging.getLogger(__name__)


def specs(models: ModelFiles, names: Sequence[str]) -> List[EngineSpec]:
    rows = []
    if GENERIC in models.config.tables:  # the export takes minutes: only for a table that is timed
        onnx_dir = optimum_export(models.hf_dir, models.store / "optimum")
        rows.append(
            EngineSpec(OPTIMUM, "Optimum ORT", str(onnx_dir), "fp32", models.window, str(models.hf_dir))
        )
    if models.personal_dir and PERSONAL in models.config.tables:
        # Optimum's own export of the personal bundles' merged weights, at the same window
        personal = optimum_export(models.personal_dir, models.store / "optimum-personal")
        rows.insert(
            0,
            EngineSpec(
                OPTIMUM,
                "Optimum ORT",
                str(personal),
                "fp32",
                models.personal_window,
                str(models.personal_dir),
                table=PERSONAL,
            ),
        )
    return rows


def optimum_export(hf_dir: Path, out: Path) -> Path:
    """Optimum's own export of the model (encoder + decoders with KV cache), as its users would run it."""
    if (out / "encoder_model.onnx").is_file():
        return out
    from optimum.exporters.onnx import main_export

    from resonance.bench.models import hf_config

    log.info("exporting %s with Optimum to %s", hf_dir, out)
    tmp = out.with_name(out.name + ".tmp")
    # the encoder checks its input length: a shortened window needs a dummy input of that many frames
    frames = 2 * hf_config(hf_dir).get("max_source_positions", 1500)
    main_export(
        str(hf_dir),
        output=tmp,
        task="automatic-speech-recognition-with-past",
        do_validation=False,
        nb_max_frames=frames,
    )
    os.replace(tmp, out)
    return out


def load(job: Dict[str, Any]) -> Tuple[Transcribe, str]:
    from resonance.errors import require

    ort = require("onnxruntime", "export", "the Optimum baseline")
    modeling = require("optimum.onnxruntime", "export", "the Optimum baseline")
    import torch
    from transformers import WhisperProcessor

    # torch only glues the steps here (logits processors); with `threads` torch threads next to onnxruntime's
    # spinning ones, a 2-core machine runs 15x slower (measured), which is no fair picture of Optimum.
    torch.set_num_threads(1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = job["threads"]
    options.inter_op_num_threads = 1
    spec = job["spec"]
    model = modeling.ORTModelForSpeechSeq2Seq.from_pretrained(
        spec["model"], provider="CPUExecutionProvider", session_options=options
    )
    processor = WhisperProcessor.from_pretrained(spec["processor"])
    return hf_generate(model, processor, job), f"optimum + onnxruntime {ort.__version__}"
