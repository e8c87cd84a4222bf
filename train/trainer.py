"""Fine-tune an adapter on one person's recordings. Read top to bottom: this is the whole recipe.

config -> data (+ held-out phrases) -> generic CER -> full fine-tuning of the encoder (or LoRA, on encoder
and/or decoder) -> epochs with validation CER, the last kept (--keep best: the best, early stop) -> CER of
the adapted model -> adapter folder + report
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import numpy as np

from resonance.errors import ResonanceError
from resonance.fsutil import (
    atomic_directory,
    atomic_file,
    refuse_overlap,
    refuse_to_overwrite,
    write_json_atomic,
    write_text_atomic,
)
from resonance.text import normalize_for_cer
from resonance.train import adaptation
from resonance.train.config import ADAPTER_FILES, TRAIN_CONFIG_FILE, WINDOW_CHOICES, TrainConfig
from resonance.train.data import (
    Augmenter,
    Example,
    Recordings,
    collate,
    count_trained_on,
    load_examples,
    split_examples,
)
from resonance.train.distill import GenericDecoderTeacher, kl_to_teacher
from resonance.train.evaluate import as_rows, score, transcribe_batch
from resonance.train.phones import PHONE_HEAD_LEARNING_RATE, PhoneCTC
from resonance.train.window import choose_window, shorten_audio_window

log = logging.getLogger("resonance.train")
CHECKPOINT_FILE = "checkpoint.pt"  # in <out>.partial/ while training; removed when the adapter is written
CHECKPOINT_KEYS = {"optimizer", "scheduler", "step", "history", "best", "bad_evals"}  # + weights (or lora)
FULL_WINDOW = 30.0
REPORTED_SETTINGS = (
    "base_model",
    "finetune",
    "adapt",
    "lora_r",
    "lora_alpha",
    "learning_rate",
    "batch_size",
    "epochs",
    "seed",
    "eval_beams",
    "keep",
    "average_epochs",
)
EVAL_IS_VALIDATION = "validation split (phrases held out of training)"
EVAL_IS_SELECTING_VALIDATION = "validation split (also used to pick the step: optimistic)"
# Options that a checkpoint's weights, data split and optimiser state depend on: resuming with other values
# would silently mix two runs (peft loads LoRA weights non-strictly; the restored optimiser keeps its own
# learning rate). Steps, epochs, patience, eval data and the machine may change.
RESUME_MUST_MATCH = (
    "data",
    "max_train_samples",
    "pick",
    "val_fraction",
    "seed",
    "base_model",
    "language",
    "task",
    "window_seconds",
    "finetune",
    "adapt",
    "lora_r",
    "lora_alpha",
    "decoder_lora_r",
    "target_modules",
    "learning_rate",
    "distill_weight",
    "phone_ctc_weight",
    "average_epochs",
    "label_smoothing",
    "weight_decay",
    "init_adapter",
)


def train(
    config: TrainConfig, generic_cache: dict | None = None, recordings: Recordings | None = None
) -> dict:
    """Train, evaluate and save an adapter; returns the report (also written to <out>/report.json).

    ``generic_cache`` (optional, caller-owned) remembers the generic model's transcripts of an eval set, so a
    learning curve decodes them once rather than once per size. ``recordings``: what to train and evaluate on
    when it is not simply ``config.data`` and ``config.eval_data`` (``resonance update``: old + new recordings,
    judged on held-out new ones).
    """
    out = Path(config.out)
    # --- where it goes and what it reads, checked before torch is even imported: a mistake takes a moment
    checkpoint_path = check_output(config)
    if not config.resume and checkpoint_path.is_file():
        log.warning(
            "%s holds the checkpoint of an interrupted run: this run starts over and replaces it at its first "
            "evaluation (stop now and add --resume to continue that run instead)",
            checkpoint_path.parent,
        )
    recordings = recordings or Recordings.of(config)  # labels checked before the (slow) model load

    import torch
    from transformers import WhisperFeatureExtractor

    from resonance.train.base_model import load_whisper
    from resonance.train.report import model_card, write_report

    checkpoint = _load_checkpoint(checkpoint_path, config) if config.resume else None
    _seed_everything(config.seed)
    _quiet_transformers()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = _pick_device(config.device)

    # --- data: every clip loaded once
    processor, model = load_whisper(config.base_model)
    tokenizer = processor.tokenizer
    tokenizer.set_prefix_tokens(language=config.language, task=config.task, predict_timestamps=False)
    max_tokens = model.config.max_target_positions  # a longer label cannot be a Whisper target
    examples = load_examples(recordings.train, tokenizer, max_tokens)
    train_set, val_set = split_examples(examples, config.val_fraction, config.seed)
    # Without --eval-data the report is measured on the validation split, which also picks the kept step.
    eval_set = load_examples(recordings.eval, tokenizer, max_tokens) if recordings.eval else val_set
    if len(train_set) < 1:
        raise ResonanceError("no training utterances left after the validation split", "add recordings")
    if not eval_set:  # TrainConfig refuses val_fraction 0 without eval_data; this is the last guard
        raise ResonanceError(
            "nothing to evaluate on", "pass --eval-data (a second take) or a --val-fraction above 0"
        )
    window = config.window_seconds or choose_window(max(e.seconds for e in train_set), WINDOW_CHOICES)
    if not math.isfinite(window):
        raise ResonanceError("a training clip is longer than 30 s", "cut recordings into short phrases")
    log.info(
        "%d train / %d validation / %d eval utterances, %.0f s window, device %s",
        len(train_set),
        len(val_set),
        len(eval_set),
        window,
        device,
    )

    # --- the generic model's CER: what the person gets without Resonance (full 30 s window)
    model.to(device)
    full_fe = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    cache_key = (
        config.base_model,
        config.language,
        tuple(e.rel for e in eval_set),
        tuple(e.text for e in eval_set),
    )
    if generic_cache is not None and cache_key in generic_cache:
        before_hyps = generic_cache[cache_key]
    else:
        # Greedy whatever --eval-beams says: transformers' beam search has no fallback for a model that loops,
        # and on atypical speech the generic one does (speaker A's take2: CER 0.76 greedy, 1.01 with 4 beams),
        # so the generic model is measured at its better decoding.
        before_hyps = _transcribe(model, full_fe, tokenizer, eval_set, FULL_WINDOW, config)
        if generic_cache is not None:
            generic_cache[cache_key] = before_hyps
    cer_before, rows_before = score(eval_set, before_hyps)
    log.info("generic model CER on eval: %.3f", cer_before)

    # --- full fine-tuning (or LoRA) of the chosen half, on a model cut to the training window
    shorten_audio_window(model, window)
    feature_extractor = WhisperFeatureExtractor(
        feature_size=model.config.num_mel_bins, chunk_length=int(window)
    )
    if config.augment:  # SpecAugment inside the encoder (active in train mode only)
        model.config.apply_spec_augment, model.config.mask_time_prob, model.config.mask_feature_prob = (
            True,
            0.05,
            0.05,
        )
    # The generic decoder, copied before training touches it, keeps the trained one's language (train/distill.py).
    teacher = GenericDecoderTeacher(model).to(device) if config.distill_weight > 0 else None
    model = adaptation.make_trainable(model, config)
    if config.init_adapter:  # a warm start: this patient's previous adapter (resonance update)
        adaptation.warm_start(model, Path(config.init_adapter), config)
    model.to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info(
        "%s of the %s trains %d of %d parameters (%.2f%%)",
        "LoRA" if config.finetune == "lora" else "full fine-tuning",
        "encoder and decoder" if config.adapt == "both" else config.adapt,
        trainable,
        total,
        100 * trainable / total,
    )

    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    max_steps = config.max_steps or max(1, round(config.epochs * steps_per_epoch))
    eval_every = max(1, round(steps_per_epoch / config.evals_per_epoch))
    # The auxiliary head is new and random: it learns at its own, larger rate (train/phones.py).
    phone_head = (
        PhoneCTC(model.config.d_model, [e.text for e in train_set], device)
        if config.phone_ctc_weight > 0
        else None
    )
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in model.parameters() if p.requires_grad]}]
        + (
            [{"params": list(phone_head.proj.parameters()), "lr": PHONE_HEAD_LEARNING_RATE}]
            if phone_head
            else []
        ),
        lr=config.peak_learning_rate,
        weight_decay=config.weight_decay,
    )
    warmup = max(1, round(config.warmup_fraction * max_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_then_linear_decay(warmup, max_steps))
    autocast_dtype = _autocast_dtype(config.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    augment = Augmenter(config.seed) if config.augment else None
    pad_id, sot_id = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|startoftranscript|>")

    history: dict[str, list] = {"loss": [], "val": []}
    best = {"cer": math.inf, "step": 0, "state": None}
    step, bad_evals = 0, 0
    average = (
        EpochAverage(config.average_epochs, steps_per_epoch, max_steps) if config.average_epochs > 1 else None
    )
    if checkpoint is not None:
        weights = checkpoint["weights"] if "weights" in checkpoint else checkpoint["lora"]  # older: LoRA only
        adaptation.load_trained_state(model, weights, config)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        step, history, best = checkpoint["step"], checkpoint["history"], checkpoint["best"]
        bad_evals = checkpoint["bad_evals"]
        if phone_head is not None and checkpoint.get("phone_head"):
            phone_head.proj.load_state_dict(checkpoint["phone_head"])
        if average is not None and checkpoint.get("average"):
            average.total, average.count = checkpoint["average"]["total"], checkpoint["average"]["count"]
        log.info("resumed from step %d of %d", step, max_steps)

    # --- the loop
    val_chars = sum(len(normalize_for_cer(e.text)) for e in val_set)
    order = random.Random(config.seed)
    progress = _progress(max_steps, step)
    started, samples_seen = time.perf_counter(), 0
    while step < max_steps:
        batch_order = order.sample(train_set, len(train_set))
        for start in range(0, len(batch_order), config.batch_size):
            if step >= max_steps:
                break
            batch = batch_order[start : start + config.batch_size]
            features, decoder_input, labels = collate(
                batch, feature_extractor, window, sot_id, pad_id, augment
            )
            model.train()
            with torch.autocast(
                device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                decoder_input, labels = decoder_input.to(device), labels.to(device)
                output = model(
                    input_features=features.to(device), decoder_input_ids=decoder_input, labels=labels
                )
                loss = (
                    output.loss
                    if not config.label_smoothing
                    else smoothed_loss(output.logits, labels, config)
                )
                if teacher is not None:
                    generic = teacher.logits(decoder_input, output.encoder_last_hidden_state)
                    loss = loss + config.distill_weight * kl_to_teacher(output.logits, generic, labels)
                if phone_head is not None:
                    loss = loss + config.phone_ctc_weight * phone_head.loss(
                        output.encoder_last_hidden_state, [e.text for e in batch], [e.seconds for e in batch]
                    )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            if average is not None and average.due(step):
                average.add(adaptation.trained_state(model, config))
            samples_seen += len(batch)
            history["loss"].append([step, loss.item()])
            progress.update(1)
            if config.keep == "best":
                progress.set_postfix(loss=f"{loss.item():.3f}", best_val_cer=_fmt(best["cer"]))
            else:
                last_val = history["val"][-1][1] if history["val"] else math.inf
                progress.set_postfix(loss=f"{loss.item():.3f}", val_cer=_fmt(last_val))

            if val_set and (step % eval_every == 0 or step == max_steps):
                val_cer, _ = score(
                    val_set, _transcribe(model, feature_extractor, tokenizer, val_set, window, config)
                )
                history["val"].append([step, val_cer])
                if config.keep == "best":
                    best, bad_evals = _track_best(best, bad_evals, history["val"], val_chars, model, config)
                # Written under a temporary name and renamed: a run killed mid-write keeps the previous one.
                with atomic_file(checkpoint_path) as tmp_checkpoint:
                    torch.save(
                        {
                            "weights": adaptation.trained_state(model, config),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "step": step,
                            "history": history,
                            "best": best,
                            "bad_evals": bad_evals,
                            "config": _resolved(config),
                            "phone_head": phone_head.proj.state_dict() if phone_head is not None else None,
                            "average": (
                                {"total": average.total, "count": average.count}
                                if average is not None
                                else None
                            ),
                        },
                        tmp_checkpoint,
                    )
                if config.keep == "best" and config.patience and bad_evals >= config.patience:
                    log.info(
                        "validation CER has not improved for %d evaluations: stopping at step %d",
                        bad_evals,
                        step,
                    )
                    max_steps = step
    progress.close()
    train_seconds = time.perf_counter() - started

    # --- keep the last weights (or, with --keep best, the best evaluation's), measure them on the eval data
    if config.keep == "last":
        last_val = history["val"][-1][1] if history["val"] else None
        best = {"cer": last_val, "step": step, "state": None}
        if average is not None and average.count:
            log.info("keeping the mean of the weights at the end of the last %d epoch(s)", average.count)
            adaptation.load_trained_state(model, average.mean(), config)
    elif best["state"] is not None:
        adaptation.load_trained_state(model, best["state"], config)
    after_hyps = _transcribe(
        model, feature_extractor, tokenizer, eval_set, window, config, beams=config.eval_beams
    )
    cer_after, rows_after = score(eval_set, after_hyps)
    log.info("adapted model CER on eval: %.3f (generic %.3f)", cer_after, cer_before)

    report = {
        "cer_before": cer_before,
        "cer_after": cer_after,
        "improved": cer_after < cer_before,
        "eval_source": recordings.eval_source
        or (EVAL_IS_SELECTING_VALIDATION if config.keep == "best" else EVAL_IS_VALIDATION),
        "eval_is_validation": not recordings.eval,
        "n_train": len(train_set),
        "n_validation": len(val_set),
        "n_eval": len(eval_set),
        "n_eval_trained_on": count_trained_on(train_set, eval_set),
        "train_texts": sorted({e.text for e in train_set}),
        # Every phrase recorded (training and validation splits): the phrase board export writes.
        "phrases": recordings.recorded_phrases(),
        "window_seconds": window,
        "steps": step,
        "keep": config.keep,
        "best_step": best["step"],
        "best_val_cer": best["cer"] if history["val"] else None,
        "selection_margin": (
            round(
                selection_margin(config.selection_tolerance, min(v for _, v in history["val"]), val_chars), 4
            )
            if history["val"] and config.keep == "best"
            else None
        ),
        "train_seconds": round(train_seconds, 1),
        "samples_per_second": round(samples_seen / train_seconds, 2) if train_seconds > 0 else None,
        "device": str(device),
        "trainable_parameters": trainable,
        "history": history,
        "utterances": [
            {**a, "before": b["hypothesis"], "cer_before": b["cer"]}
            for a, b in zip(as_rows(rows_after), as_rows(rows_before))
        ],
        "data_seconds": round(sum(e.seconds for e in train_set), 1),
        "settings": {  # the ones a technician asks about first; train_config.json has every option
            **{k: v for k, v in _resolved(config).items() if k in REPORTED_SETTINGS},
            "window_seconds": window,
        },
    }
    # check_output refused this earlier unless it is free, or an adapter and --force/--resume
    with atomic_directory(out, force=True, what="adapter", own=ADAPTER_FILES) as tmp:
        adaptation.save(model, tmp, config)
        processor.feature_extractor = feature_extractor
        processor.save_pretrained(tmp)
        made_with = {**_resolved(config), "window_seconds": window}
        write_json_atomic(tmp / TRAIN_CONFIG_FILE, made_with)
        report = write_report(tmp, report)
        write_text_atomic(tmp / "README.md", model_card(report, made_with, out.name))  # not peft's template
    checkpoint_path.unlink(missing_ok=True)
    _remove_empty(checkpoint_path.parent)
    return report


def check_output(config: TrainConfig) -> Path:
    """Refuse an --out that overlaps an input, or exists and is not ours to replace; returns the checkpoint path.

    The adapter folder and its checkpoint folder (<out>.partial) must not be, hold or lie inside the data,
    the eval data or a local base model: replacing them would delete the patient's recordings. An existing
    --out is replaced only with --force (or --resume) and only if it is an adapter (train_config.json).
    """
    out = Path(config.out)
    checkpoint_path = out.with_name(out.name + ".partial") / CHECKPOINT_FILE
    inputs = training_inputs(config)
    refuse_overlap(out, "adapter folder", inputs)
    refuse_overlap(checkpoint_path.parent, "checkpoint folder", inputs)
    resuming = config.resume and checkpoint_path.is_file()
    refuse_to_overwrite(out, config.force or resuming, "adapter", own=ADAPTER_FILES)
    return checkpoint_path


def training_inputs(config: TrainConfig) -> list[tuple[str, str | None]]:
    """What training reads, as (name, path) for fsutil.refuse_overlap: no output may touch these."""
    base_model = config.base_model if Path(config.base_model).exists() else None  # not a hub id or pypi:
    return [("data folder", config.data), ("eval data folder", config.eval_data), ("base model", base_model)]


def _load_checkpoint(path: Path, config: TrainConfig) -> dict | None:
    """The interrupted run's state to resume from (None: there is none), if it was made with these options."""
    import torch

    if not path.exists():
        log.info("--resume: no checkpoint at %s, starting from step 0", path)
        return None
    start_over = (
        f"run without --resume to start over (the next checkpoint replaces it), or delete {path.parent}"
    )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated zip, a stray pickle, a disk error: torch raises many kinds
        raise ResonanceError(
            f"the checkpoint {path} is damaged and cannot be resumed from (torch: {type(exc).__name__})",
            start_over,
        ) from exc
    missing = sorted(CHECKPOINT_KEYS - set(checkpoint) if isinstance(checkpoint, dict) else CHECKPOINT_KEYS)
    if missing or not ({"weights", "lora"} & set(checkpoint)):
        raise ResonanceError(
            f"{path} is not a training checkpoint of resonance (missing {', '.join(missing) or 'weights'})",
            start_over,
        )
    saved = checkpoint.get("config")
    if saved is None:  # written before checkpoints recorded their options
        log.warning("checkpoint %s does not record its options: resuming unchecked", path)
        return checkpoint
    # An option added since the checkpoint: its value then (the recipe of its time, else today's default).
    saved = {**_resolved(TrainConfig()), **TrainConfig.saved_values(saved)}
    current = _resolved(config)
    changed = [
        f"{k}={saved.get(k)!r} (now {current[k]!r})" for k in RESUME_MUST_MATCH if saved.get(k) != current[k]
    ]
    if changed:
        raise ResonanceError(
            f"cannot resume: the checkpoint in {path.parent} was made with {', '.join(changed)}",
            "resume with the interrupted run's options, or run without --resume to start over",
        )
    return checkpoint


def _resolved(config: TrainConfig) -> dict:
    """The options as used: the learning rate's default depends on --finetune, so it is written out."""
    return {**config.to_json(), "learning_rate": config.peak_learning_rate}


def _track_best(best: dict, bad_evals: int, val_history: list, val_chars: int, model, config: TrainConfig):
    """--keep best: the latest evaluation is the new best if it is within the noise margin of the lowest
    validation CER so far; otherwise one more evaluation without improvement."""
    step, val_cer = val_history[-1]
    lowest = min(v for _, v in val_history)
    if val_cer <= lowest + selection_margin(config.selection_tolerance, lowest, val_chars):
        return {"cer": val_cer, "step": step, "state": adaptation.trained_state(model, config)}, 0
    return best, bad_evals + 1


def selection_margin(configured: float | None, lowest_cer: float, n_chars: int) -> float:
    """How much worse than the best validation CER a later evaluation may be and still be kept.

    ``None``: one standard error of a CER measured on ``n_chars`` characters (binomial, with the rate kept
    within [0.05, 0.95] so that a perfect score on a few characters still leaves room for noise).
    """
    if configured is not None:
        return configured
    rate = min(max(lowest_cer, 0.05), 0.95)
    return math.sqrt(rate * (1 - rate) / max(n_chars, 1))


def _transcribe(
    model, feature_extractor, tokenizer, examples: list[Example], window: float, config, beams: int = 1
) -> list[str]:
    if not examples:
        return []
    return transcribe_batch(
        model,
        feature_extractor,
        tokenizer,
        examples,
        window,
        config.language,
        config.task,
        num_beams=beams,
    )


def smoothed_loss(logits, labels, config):
    """Cross-entropy over the trained token positions with ``config.label_smoothing`` (what output.loss is at 0)."""
    import torch.nn.functional as F

    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=-100,
        label_smoothing=config.label_smoothing,
    )


class EpochAverage:
    """The running mean of the trained tensors at the end of each of the last ``epochs`` epochs (checkpoint
    averaging): the weights of one run at several points, which smooths the last steps' noise for free."""

    def __init__(self, epochs: int, steps_per_epoch: int, max_steps: int) -> None:
        self.first_step = max_steps - epochs * steps_per_epoch  # averaging starts after this step
        self.steps_per_epoch, self.max_steps = steps_per_epoch, max_steps
        self.total: dict | None = None
        self.count = 0

    def due(self, step: int) -> bool:
        epoch_end = step % self.steps_per_epoch == 0 or step == self.max_steps
        return epoch_end and step > self.first_step

    def add(self, state: dict) -> None:
        state = {k: v.float() for k, v in state.items()}
        self.total = state if self.total is None else {k: self.total[k] + v for k, v in state.items()}
        self.count += 1

    def mean(self) -> dict:
        return {k: v / self.count for k, v in self.total.items()}


def _warmup_then_linear_decay(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _pick_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ResonanceError(
            "--device cuda was asked for, but torch sees no CUDA GPU",
            "use --device cpu, or install a CUDA build of torch on the GPU machine",
        )
    return torch.device(name)


def _autocast_dtype(precision: str, device):
    import torch

    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _quiet_transformers() -> None:
    """transformers 4.57 warns on every Whisper generate() about processors it builds itself: noise for users."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _progress(total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="training", unit="step", dynamic_ncols=True)


def _fmt(value: float) -> str:
    return "-" if math.isinf(value) else f"{value:.3f}"


def _remove_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
