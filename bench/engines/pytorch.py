"""The PyTorch baseline: Transformers' ``generate`` on the Hugging Face model, fp32 (fp16 on CUDA: gpu-check)."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from resonance.bench.config import PERSONAL, EngineSpec, ModelFiles
from resonance.bench.engines import PYTORCH
from resonance.bench.engines.common import Transcribe, device, hf_generate


def specs(models: ModelFiles, names: Sequence[str]) -> List[EngineSpec]:
    rows = [EngineSpec(PYTORCH, "PyTorch generate", str(models.hf_dir), "fp32", models.window)]
    if models.personal_dir:  # the same merged weights and window as the personal bundles
        personal = str(models.personal_dir)
        rows.insert(
            0,
            EngineSpec(PYTORCH, "PyTorch generate", personal, "fp32", models.personal_window, table=PERSONAL),
        )
    return rows


def load(job: Dict[str, Any]) -> Tuple[Transcribe, str]:
    from resonance.errors import require

    torch = require("torch", "train", "the PyTorch baseline")
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    torch.set_num_threads(job["threads"])
    torch.set_num_interop_threads(1)
    model_dir = job["spec"]["model"]
    processor = WhisperProcessor.from_pretrained(model_dir)
    dtype = torch.float16 if job["spec"]["precision"] == "fp16" else torch.float32
    model = WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).eval().to(device(job))
    return hf_generate(model, processor, job), f"torch {torch.__version__}"
