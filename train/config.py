"""Training configuration: plain values with defaults, validated once, overridable from the CLI or a JSON/YAML file.

The config used is saved next to the adapter (train_config.json), so every adapter says how it was made.
Each field's ``help`` is its --help text (train/cli.py builds the options from these fields).
"""

from __future__ import annotations

import math
import os
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from resonance.constants import DEFAULT_BASE_MODEL, OFFLINE_BASE_MODEL, TRAIN_CONFIG_FILE
from resonance.errors import ResonanceError
from resonance.fsutil import read_json_file

ADAPTER_FILES = (TRAIN_CONFIG_FILE,)  # only `resonance train` writes it: what marks a folder as an adapter
WINDOW_CHOICES = (5.0, 10.0, 15.0, 30.0)  # encoder windows a model can be trained for (seconds)
ALL_PROJECTIONS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
    "fc1",
    "fc2",
)  # attention + MLP, encoder and decoder
FINETUNE_CHOICES = ("lora", "full")
KEEP_CHOICES = ("last", "best")
PICK_CHOICES = ("first", "sounds")
ADAPT_CHOICES = ("encoder", "decoder", "both")
# Peak learning rates: LoRA's measured on speaker A (README, "Training: what the recipe does and why"); full
# fine-tuning moves the pretrained weights themselves, so it takes a far smaller step: 5e-5 won the study on
# the encoder (1e-5 learnt too little, 1e-4 lost unseen phrases; README, "Recipe study").
LORA_LEARNING_RATE = 5e-4
FULL_LEARNING_RATE = 5e-5
# The recipe before the study (README, "Recipe study"): LoRA on encoder and decoder. Adapters and checkpoints
# made before --finetune/--adapt existed were all made with it, and their saved options lack these keys.
LORA_RECIPE = {"finetune": "lora", "adapt": "both"}
# Adapters and checkpoints made before --keep existed kept the best validation step (with early stopping).
BEFORE_KEEP = {"keep": "best"}


def local_folder_as_absolute(base_model: str) -> str:
    """An existing local base-model folder as an absolute path; a ``pypi:`` name or a hub id as it is.

    train_config.json records the base model for `resonance export` and `resonance update`, which may run in
    another folder: there a relative "models/whisper-base" is no folder, reads as a hub id, and fails with a
    network error that names neither the folder nor the cause.
    """
    if base_model.startswith("pypi:"):  # train/pypi_models.py's PYPI_PREFIX (not imported: it loads more)
        return base_model
    folder = Path(base_model).expanduser()
    # abspath, not resolve: a folder reached through a link stays as the user named it
    return os.path.abspath(folder) if folder.is_dir() else base_model


def _option(default: Any, help: str) -> Any:
    """A field with its --help text attached (a comment would be lost to the formatter's line wrapping)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # --- data
    data: str = _option("", help="folder in the guide's layout: audio/*.wav + labels.json")
    out: str = _option("", help="adapter folder to create, e.g. adapters/grandpa")
    eval_data: str | None = _option(
        None,
        help="a second take of the phrases to report CER on; default: the validation split of --data "
        "(with --keep best it also picks the kept step, so the measure is optimistic)",
    )
    val_fraction: float = _option(
        0.1,
        help="share of the phrases of --data held out of training, to report on without --eval-data (and "
        "to pick the kept step with --keep best); 0 = no validation",
    )
    max_train_samples: int | None = _option(
        None, help="use only N utterances of --data (learning curves; which ones: --pick); default: all"
    )
    # The recipe study asked whether N recordings chosen to hold the most syllables teach more than the first
    # N: on speaker A they did not (README, "Recipe study"); the choice stays an option for learning curves.
    pick: str = _option(
        "first",
        help="which N recordings --max-train-samples takes: first (as labels.json lists them) | sounds (the N "
        "that hold the most different syllables; measured worse on speaker A)",
    )
    # --- model
    base_model: str = _option(
        DEFAULT_BASE_MODEL, help=f"hub id, local Hugging Face folder, or {OFFLINE_BASE_MODEL} (offline)"
    )
    language: str = _option("zh", help="Whisper language code of the recordings")
    task: str = _option("transcribe", help="Whisper task: transcribe (or translate)")
    window_seconds: float | None = _option(
        None,
        help=f"encoder audio window, one of {', '.join(f'{w:g}' for w in WINDOW_CHOICES)} s; "
        "default: the smallest that holds the longest clip",
    )
    # --- LoRA (only with --finetune lora). The guide's r=16/alpha=32 on q_proj,v_proj with lr 1e-3 was the
    # starting point; measured on the development speaker (README, "Training: what the recipe does and why"),
    # adapting every attention and MLP projection of encoder and decoder at lr 5e-4 generalises far better from
    # 50 clips (85 % vs 43 % on seen phrases).
    lora_r: int = _option(16, help="LoRA rank (size of each adapter matrix; with --finetune lora)")
    lora_alpha: int = _option(32, help="LoRA scaling: the update is multiplied by alpha / r")
    lora_dropout: float = _option(0.05, help="dropout on the LoRA input during training, in [0, 1)")
    target_modules: list[str] = field(
        default_factory=lambda: list(ALL_PROJECTIONS),
        metadata={"help": "modules that get LoRA, e.g. q_proj,v_proj (the guide's)"},
    )
    # --- what is trained (README, "Choosing the recipe" and "Recipe study": each choice measured on speaker A,
    # 3 seeds at 30/50/100 recordings; the losers stay options). Fully fine-tuning the encoder with the decoder
    # frozen beat LoRA on encoder and decoder (the old default, `--finetune lora --adapt both`) on seen AND
    # unseen phrases at every size, with a far smaller spread between seeds: the frozen decoder keeps the
    # generic model's language.
    finetune: str = _option(
        "full",
        help="full: train the weights themselves (the adapter folder holds the trained tensors, ~80 MB for "
        "whisper-base's encoder) | lora: small adapter matrices beside the base weights (~9 MB; the recipe "
        "before the study, with --adapt both)",
    )
    adapt: str = _option(
        "encoder",
        help="which half of Whisper is trained: encoder (acoustics; the decoder keeps the generic model's "
        "language) | decoder (language) | both",
    )
    decoder_lora_r: int | None = _option(
        None,
        help="a smaller LoRA rank for the decoder when --adapt both (adapts the language lightly); "
        "default: --lora-r",
    )
    distill_weight: float = _option(
        0.0,
        help="weight of a KL term that keeps the trained decoder's next-token distribution near the "
        "generic decoder's on the same audio (0 = off; needs a trained decoder)",
    )
    phone_ctc_weight: float = _option(
        0.0,
        help="weight of an auxiliary CTC loss that asks the encoder for each recording's Mandarin initials and "
        "finals (train/phones.py; 0 = off; needs a trained encoder)",
    )
    init_adapter: str | None = _option(
        None,
        help="start from this adapter's trained weights instead of from the base model (a warm start, as "
        "`resonance update --start warm` does); it must have been trained with the same recipe (--finetune, --adapt, LoRA)",
    )
    # --- optimisation
    learning_rate: float | None = _option(
        None,
        help=f"peak learning rate of AdamW; default: {FULL_LEARNING_RATE:g} with --finetune full (the "
        f"default), {LORA_LEARNING_RATE:g} with --finetune lora",
    )
    batch_size: int = _option(8, help="utterances per training step")
    epochs: float = _option(8.0, help="passes over the training split; --max-steps overrides when set")
    max_steps: int | None = _option(None, help="training steps (>= 1); default: from --epochs")
    warmup_fraction: float = _option(
        0.1, help="share of the steps over which the learning rate rises to its peak, in [0, 1)"
    )
    weight_decay: float = _option(0.0, help="AdamW weight decay (>= 0)")
    # Which weights the adapter keeps. Validation holds out whole phrases (3-10 of them), so it measures only
    # never-heard phrases and is too noisy to pick an epoch: on speaker A the one run of nine that stopped early
    # kept epoch 3 of 8 (91.7 / 75.3 % seen / unseen), where the last epoch gave 95.6 / 86.4 % (README,
    # "Recipe study"). So every epoch is trained and the last kept; validation only measures.
    keep: str = _option(
        "last",
        help="last: train every epoch and keep the final weights (validation only measures) | best: keep the "
        "step with the best validation CER (see --selection-tolerance) and stop early after --patience "
        "evaluations without improvement (the rule before the recipe study)",
    )
    # Checkpoint averaging (as ESPnet and fairseq average their last checkpoints): the mean of the weights at
    # several epoch ends, a cheaper cousin of averaging whole runs ("model soup", README "Recipe study").
    average_epochs: int = _option(
        1,
        help="with --keep last: keep the mean of the weights at the end of the last N epochs instead of the "
        "final weights alone (1 = the final weights)",
    )
    patience: int = _option(
        3, help="with --keep best: evaluations without improvement before stopping early (0 = never)"
    )
    # With --keep best: the *latest* evaluation within this margin of the best is kept. On speaker A (100
    # clips) the strict rule kept epoch 2 (79 % seen / 71 % unseen); the margin kept epoch 8 (93 % / 79 %):
    # README, "Training: what the recipe does and why".
    selection_tolerance: float | None = _option(
        None,
        help="with --keep best: keep the latest evaluation within this validation-CER margin of the best; "
        "default: one standard error of the validation CER (0 = strictly the best)",
    )
    evals_per_epoch: float = _option(1.0, help="validation evaluations per epoch (> 0)")
    augment: bool = _option(False, help="speed/gain/noise perturbation + SpecAugment")
    label_smoothing: float = _option(
        0.0, help="share of each target token's probability spread over the vocabulary, in [0, 1) (0 = off)"
    )
    # The device decodes with 4 beams by default (runtime/decoding.py); greedy here is the conservative,
    # faster measure (speaker A, 50 recordings: 90.0 / 78.3 % seen / unseen greedy, 93.5 / 79.4 % with 4).
    eval_beams: int = _option(
        1,
        help="beams for measuring the personal model on the eval data: 1 = greedy (faster, a little "
        "below what the device gets), 4 = the device's default decoding; the generic model and validation "
        "stay greedy",
    )
    # --- runtime
    device: str = _option("auto", help="auto | cpu | cuda | cuda:N")
    precision: str = _option("auto", help="auto (bf16/fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16")
    seed: int = _option(0, help="seed of the validation split, batch order and augmentation")
    threads: int | None = _option(None, help="torch CPU threads (>= 1); default: torch's choice")
    force: bool = _option(False, help="replace an existing adapter at --out")
    resume: bool = _option(False, help="continue from the last checkpoint of an interrupted run")

    def __post_init__(self) -> None:
        self.base_model = local_folder_as_absolute(self.base_model)
        for names, ok, why in _RANGES:
            for name in names:
                if not ok(getattr(self, name)):
                    self._bad(name, why)
        if self.window_seconds is not None and self.window_seconds not in WINDOW_CHOICES:
            self._bad("window_seconds", f"must be one of {WINDOW_CHOICES}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            self._bad("device", "must be auto, cpu, cuda or cuda:N")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            self._bad("precision", "must be auto, fp32, fp16 or bf16")
        for name, choices in (
            ("finetune", FINETUNE_CHOICES),
            ("adapt", ADAPT_CHOICES),
            ("keep", KEEP_CHOICES),
            ("pick", PICK_CHOICES),
        ):
            if getattr(self, name) not in choices:
                self._bad(name, f"must be one of {', '.join(choices)}")
        if self.decoder_lora_r is not None and (self.finetune != "lora" or self.adapt != "both"):
            self._bad(
                "decoder_lora_r", "is a LoRA rank for the decoder: use it with --finetune lora --adapt both"
            )
        if self.distill_weight > 0 and self.adapt == "encoder":
            # The generic decoder is the teacher: with the decoder frozen, student and teacher are one model.
            self._bad("distill_weight", "needs a trained decoder (--adapt decoder or both)")
        if self.phone_ctc_weight > 0 and self.adapt == "decoder":
            self._bad("phone_ctc_weight", "shapes the encoder: use it with --adapt encoder or both")
        if self.average_epochs > 1 and self.keep != "last":
            self._bad("average_epochs", "averages the last epochs' weights: use it with --keep last")
        if not self.target_modules:
            self._bad("target_modules", "name at least one module, e.g. q_proj,v_proj")
        if not self.eval_data and self.val_fraction == 0:
            # Without either there is nothing to measure the adapter on: refuse before hours of training.
            raise ResonanceError(
                "nothing to evaluate on: val_fraction is 0 and no eval_data is given",
                "pass --eval-data (a second take of the phrases) or a --val-fraction above 0, e.g. 0.1",
            )

    @property
    def peak_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return FULL_LEARNING_RATE if self.finetune == "full" else LORA_LEARNING_RATE

    def _bad(self, name: str, why: str) -> None:
        raise ResonanceError(
            f"training option {name}={getattr(self, name, '?')!r} {why}", "fix the option or config file"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def saved_values(cls, made_with: dict[str, Any]) -> dict[str, Any]:
        """The options a saved train_config.json (or checkpoint) records, as the adapter was made: options it
        predates read as the recipe of its time (LORA_RECIPE, BEFORE_KEEP), never today's default; options
        TrainConfig no longer has are left out. Everything that rebuilds a TrainConfig from a saved one goes
        through here."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in {**LORA_RECIPE, **BEFORE_KEEP, **made_with}.items() if k in known}
        # A checkpoint saved with a relative folder still matches the run that resumes it (now absolute).
        if isinstance(values.get("base_model"), str):
            values["base_model"] = local_folder_as_absolute(values["base_model"])
        return values

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Load a JSON or YAML config; CLI overrides (non-None) win."""
        values = cls.values_from_file(path)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def values_from_file(cls, path: str | Path) -> dict[str, Any]:
        """The options a JSON or YAML file sets, each converted to its field's type (not yet validated together)."""
        path = Path(path)
        if not path.is_file():
            raise ResonanceError(f"config file not found: {path}", "check the --config path")
        values = _parse(path)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ResonanceError(
                f"unknown option(s) in {path}: {', '.join(unknown)}", f"known: {', '.join(sorted(known))}"
            )
        return {name: coerce(known[name], value, source=str(path)) for name, value in values.items()}


# The numeric options' ranges: (options, test each value must pass, what the error says).
_RANGES: tuple[tuple[tuple[str, ...], Callable[[Any], bool], str], ...] = (
    (
        ("lora_r", "lora_alpha", "batch_size", "eval_beams", "average_epochs"),
        lambda v: v >= 1,
        "must be >= 1",
    ),
    (("max_steps", "max_train_samples", "threads"), lambda v: v is None or v >= 1, "must be >= 1 (or unset)"),
    (("epochs", "evals_per_epoch"), lambda v: v > 0, "must be > 0"),
    (("learning_rate",), lambda v: v is None or v > 0, "must be > 0 (or unset)"),
    (
        ("decoder_lora_r",),
        lambda v: v is None or v >= 1,
        "must be >= 1 (or unset; --adapt encoder freezes it)",
    ),
    (("weight_decay", "patience", "distill_weight", "phone_ctc_weight"), lambda v: v >= 0, "must be >= 0"),
    (("lora_dropout", "warmup_fraction", "label_smoothing"), lambda v: 0 <= v < 1, "must be in [0, 1)"),
    (("val_fraction",), lambda v: 0 <= v < 0.5, "must be in [0, 0.5)"),
    (("selection_tolerance",), lambda v: v is None or 0 <= v < 1, "must be a CER difference in [0, 1)"),
)


def _parse(path: Path) -> dict[str, Any]:
    """The mapping in a JSON or YAML file (YAML by suffix), or a ResonanceError naming the file."""
    if path.suffix in (".yaml", ".yml"):
        import yaml

        from resonance.yaml_text import safe_load

        try:
            values = safe_load(path.read_text(encoding="utf-8-sig"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ResonanceError(f"cannot parse {path}: {exc}", "fix the YAML syntax (UTF-8 text)") from exc
        except RecursionError as exc:  # "[" x 100000: the parser runs out of stack
            raise ResonanceError(f"cannot parse {path}: nested too deeply", "fix the YAML syntax") from exc
    else:
        values = read_json_file(path, "config file", "fix the JSON syntax")
    if values is None:  # an empty YAML file
        return {}
    if not isinstance(values, dict):
        raise ResonanceError(
            f"{path} must hold a mapping of option names to values, not a {type(values).__name__}",
            "write one `name: value` per line, e.g. learning_rate: 5e-4",
        )
    return values


# The annotation of each TrainConfig field (a string: `from __future__ import annotations`) -> its value type.
_KINDS: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool, "list[str]": list}
_BOOLS = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}


def field_kind(f: Field) -> tuple[type, bool]:
    """(value type, whether None is allowed) of a TrainConfig field, read from its annotation."""
    annotation = str(f.type).replace(" ", "")
    optional = annotation.endswith("|None")
    return _KINDS[annotation[: -len("|None")] if optional else annotation], optional


def split_list(text: str) -> list[str]:
    """`q_proj, v_proj` -> ["q_proj", "v_proj"] (the command line's and a config file's list form)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def coerce(f: Field, value: Any, source: str) -> Any:
    """``value`` as field ``f``'s type, or a ResonanceError naming the option and ``source``.

    YAML reads `5e-4` as a string and `q_proj,v_proj` as one string; JSON may write 8 as 8.0.
    """
    kind, optional = field_kind(f)
    if value is None and optional:
        return None
    converted = _convert(kind, value)
    if converted is None:
        expected = {str: "text", int: "a whole number", float: "a number", bool: "true or false"}.get(
            kind, "a list of names (e.g. q_proj,v_proj or [q_proj, v_proj])"
        )
        raise ResonanceError(
            f"option {f.name} in {source} is {value!r}, which is not {expected}",
            f"fix {f.name} in {source}" + (" (or leave it out for the default)" if optional else ""),
        )
    return converted


def _convert(kind: type, value: Any) -> Any:
    """``value`` converted to ``kind``; None when it cannot be."""
    if isinstance(value, bool) and kind is not bool:
        return None  # True is an int to Python, but never a learning rate
    if kind is bool:
        return value if isinstance(value, bool) else _BOOLS.get(str(value).strip().lower())
    if kind is list:
        items = split_list(value) if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            return None
        return [i.strip() for i in items if i.strip()]  # empty: refused by validation, naming the option
    if kind is str:
        return str(value) if isinstance(value, (str, int, float)) else None  # a folder may be named 2024
    if not isinstance(value, (str, int, float)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    if kind is float:
        return number
    return int(number) if number.is_integer() else None
