"""The engines the benchmark compares, one module each (runtime, pytorch, optimum, faster_whisper).

An engine module has two functions and no heavy import at module level (the parent process imports every
engine module; torch & co. load only in the engine's own worker process):

* ``specs(models: ModelFiles, names) -> List[EngineSpec]``: the table rows for the engine names it serves
  that the run asks for, preparing their model files (export, conversion) under ``models.store``;
* ``load(job) -> (transcribe, library)``: inside the worker, load the model for ``job["spec"]`` and return
  ``transcribe(float32 16 kHz audio) -> (text, text tokens generated)`` and a "library version" string
  (the runtime adds its per-stage milliseconds as a third item: where the time goes).

Adding an engine: a module beside these and its names in ``ENGINES`` below.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict

RUNTIME, PYTORCH, OPTIMUM = "runtime", "pytorch", "optimum"
FW_INT8, FW_FP32 = "faster-whisper-int8", "faster-whisper-fp32"

# engine name (what --engines takes, in the table's order) -> its module in this package
ENGINES: Dict[str, str] = {
    RUNTIME: "runtime",
    PYTORCH: "pytorch",
    OPTIMUM: "optimum",
    FW_INT8: "faster_whisper",
    FW_FP32: "faster_whisper",
}


def engine_module(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{ENGINES[name]}")
