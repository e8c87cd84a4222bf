"""`resonance update`: a better model from what the caregiver confirmed or corrected, deployed only if it is.

    current adapter + its recordings (OLD) + recordings collected since (NEW, `serve --collect DIR`)
      -> NEW split: most to train on, a few held out (what the patient says now, heard by neither model)
      -> train on OLD + NEW's training part (from the base model, or warm from the current adapter)
      -> export a candidate bundle like the served one (precision, int8 preset), into the models folder
      -> judge: the served bundle and the candidate transcribe the held-out recordings (the runtime, as served)
      -> no evidence it is worse (update/judge.py): deploy it (runtime/versions.py: atomic swap, the old bundle
         kept for `rollback`); worse: keep it aside as not-deployed, the served bundle stays
      -> per phrase: what the update fixed and what it broke (update.json + update.txt in the new adapter)

The new adapter records which NEW recordings it trained on, so the next update holds out only recordings no
model has heard, and trains on every earlier one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from resonance.data.labels import Utterance, load_labels
from resonance.errors import ResonanceError
from resonance.fsutil import refuse_to_overwrite, write_json_atomic, write_text_atomic
from resonance.runtime.decoding import DecodingOptions
from resonance.update.judge import CHANGES, Judgement, judge_bundles
from resonance.update.starts import DEFAULT_START, STARTS, WARM

log = logging.getLogger("resonance.update")

UPDATE_FILE = "update.json"  # in the new adapter: its sources, the split, the judgement
UPDATE_TEXT = "update.txt"  # the same in words
# Warm start goes on from the current adapter (its trained encoder, or its LoRA weights: the adapter's own
# recipe), which already knows OLD: fewer passes suffice. Scratch (the default, update/starts.py) trains the
# recipe's full length from the base model.
WARM_EPOCHS = 3.0
MIN_NEW = 5  # fewer new recordings than this: nothing worth an update, and nothing to judge on
MIN_HELD_OUT = 4  # the fewest recordings the candidate is judged on


@dataclass(frozen=True)
class UpdateOptions:
    adapter: Path  # the patient's current adapter (the one the served bundle was exported from)
    data: Optional[Path]  # the recordings it was trained on (OLD); None: the folder its train_config names
    new: Path  # recordings collected since: DIR/<patient> of `serve --collect DIR` (standard format)
    out: Path  # the new adapter (never an existing folder without force)
    bundle: Path  # the served bundle: <models>/<patient>
    start: str = DEFAULT_START  # warm: from the current adapter's weights; scratch: from the base model
    epochs: Optional[float] = None  # None: WARM_EPOCHS warm, the adapter's own recipe from scratch
    held_out: float = 0.25  # share of the new recordings held out to judge on (at least MIN_HELD_OUT)
    seed: int = 0
    deploy: bool = True  # False: judge only, keep the candidate aside
    threads: Optional[int] = None
    device: Optional[str] = None  # torch device for training (default: the adapter's recipe's, usually auto)
    # How the device decodes the served bundle (its config's decoding: section, e.g. greedy on a slow box): the
    # judge hears the held-out recordings the same way. None: the runtime's default (runtime/decoding.py).
    decoding: Optional[DecodingOptions] = None
    force: bool = False  # replace an existing --out adapter

    def __post_init__(self) -> None:
        if self.start not in STARTS:
            raise ResonanceError(f"--start {self.start!r} is not one of {STARTS}", "use warm or scratch")
        if not 0 < self.held_out < 1:
            raise ResonanceError(f"--held-out {self.held_out} is not a share in (0, 1)", "use e.g. 0.25")
        if self.epochs is not None and not self.epochs > 0:
            raise ResonanceError(f"--epochs {self.epochs} must be > 0", "use e.g. 3")


@dataclass(frozen=True)
class UpdateResult:
    adapter: Path
    candidate: Path  # where the candidate bundle is now: the served folder if deployed, else in the history
    deployed: bool
    kept: Optional[Path]  # where the previously served bundle was kept (deployed), else None
    judgement: Judgement
    n_train: int
    n_new_trained: int
    n_held_out: int
    train_seconds: float

    def summary(self) -> str:
        return render_text(self)


def update(options: UpdateOptions, progress=print) -> UpdateResult:
    """Run the update above; returns what happened (also written to the new adapter's update.json/.txt)."""
    from resonance.export.onnx_export import read_adapter
    from resonance.runtime.bundle import load_manifest
    from resonance.runtime.versions import NOT_DEPLOYED, deploy, keep
    from resonance.train.config import ADAPTER_FILES
    from resonance.train.data import Recordings
    from resonance.train.trainer import train

    started = time.perf_counter()
    # --new first (it reads no audio): a wrong folder, e.g. the whole `serve --collect` root, is reported
    # with the option's name before anything else is looked at.
    new = load_labels(options.new, option="--new")
    served = Path(options.bundle)
    manifest = load_manifest(served, verify=False)  # the served bundle, before hours of work
    info = read_adapter(Path(options.adapter))
    # No --force on `update`: a new adapter never replaces one (the hint says to choose another --out).
    refuse_to_overwrite(options.out, options.force, "adapter", own=ADAPTER_FILES, force_flag=None)
    data = Path(options.data) if options.data else adapter_data(info, Path(options.adapter))
    options = dataclasses.replace(options, data=data)
    # OLD as the current adapter saw it: a learning-curve run may have used only N of its recordings.
    from resonance.train.data import training_subset

    same_data = str(Path(info.train_config.get("data", "")).resolve()) == str(data.resolve())
    first_n = info.train_config.get("max_train_samples") if same_data else None
    old = training_subset(load_labels(data), first_n, info.train_config.get("pick", "first"))
    heard_before = set(previously_trained(Path(options.adapter)))
    fresh = [u for u in new if _key(u) not in heard_before and _key(u) not in {_key(o) for o in old}]
    if len(fresh) < MIN_NEW:
        raise ResonanceError(
            f"only {len(fresh)} recording(s) in {options.new} that the current model has not trained on",
            f"collect at least {MIN_NEW} confirmed or corrected recordings (serve --collect) and run update again",
        )
    held_out, trained_fresh = split_new(fresh, options.held_out, options.seed)
    trained_new = [u for u in new if _key(u) in heard_before] + trained_fresh
    progress(
        f"update: {len(old)} earlier + {len(trained_new)} new recordings to train on "
        f"({len(trained_fresh)} of them never trained on), {len(held_out)} new ones held out to judge on"
    )

    # --- train: the current adapter's recipe, on everything but the held-out recordings
    config = training_config(options, info.train_config, first_n)
    epochs = config.epochs
    recordings = Recordings(
        old + trained_new,
        held_out,
        f"{len(held_out)} held-out new recordings of {options.new}",
        eval_recorded=True,
    )
    report = train(config, recordings=recordings)
    train_seconds = report["train_seconds"]

    # --- export a candidate like the served bundle, beside it (a rename away from being served)
    candidate = _export_candidate(options, served, manifest, held_out)

    # --- judge on the held-out recordings, as the device runs both bundles
    progress(f"judging the new model against the served one on {len(held_out)} held-out recordings")
    judgement = judge_bundles(served, candidate, held_out, options.threads, options.decoding)
    deployed = judgement.deploy and options.deploy
    if deployed:
        kept, now_at = deploy(served, candidate), served
    else:
        kept, now_at = None, keep(served, candidate, NOT_DEPLOYED)
    result = UpdateResult(
        adapter=Path(options.out),
        candidate=now_at,
        deployed=deployed,
        kept=kept,
        judgement=judgement,
        n_train=len(old) + len(trained_new),
        n_new_trained=len(trained_new),
        n_held_out=len(held_out),
        train_seconds=train_seconds,
    )
    record = {
        "adapter": str(options.adapter),
        "start": options.start,
        "epochs": epochs,
        "data": str(options.data),
        "new": str(options.new),
        "trained_new": [_key(u) for u in trained_new],
        "held_out_new": [_key(u) for u in held_out],
        "bundle": str(served),
        "deployed": result.deployed,
        "candidate_at": str(now_at),
        "previous_kept_at": str(kept) if kept else None,
        "judgement": judgement.to_json(),
        "judge_beam_size": (options.decoding or DecodingOptions()).beam_size,  # as the device decodes
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(Path(options.out) / UPDATE_FILE, record)
    write_text_atomic(Path(options.out) / UPDATE_TEXT, render_text(result))
    return result


def training_config(options: UpdateOptions, made_with: Dict[str, Any], first_n: Optional[int]):
    """The TrainConfig of the update: the current adapter's own recipe (its train_config.json ``made_with``;
    an adapter from before --finetune/--adapt is LoRA on encoder and decoder, not today's default), started from
    the base model (scratch, the recipe's epochs) or from the adapter (warm, WARM_EPOCHS), trained on OLD (its
    first ``first_n``) + NEW and judged on the held-out new recordings."""
    from resonance.train.config import TrainConfig

    recipe = TrainConfig.saved_values(made_with)
    # Scratch without --epochs keeps the recipe's own length (its saved epochs, else TrainConfig's default).
    epochs = options.epochs or (WARM_EPOCHS if options.start == WARM else None)
    return TrainConfig(
        **{
            **recipe,
            "data": str(options.data),
            "out": str(options.out),
            # Judged on the held-out new recordings; no phrase is held out of training (val_fraction 0): every
            # phrase the patient recorded is learnt, the last step is kept, and the held-out recordings judge it.
            "eval_data": str(options.new),
            "val_fraction": 0.0,
            # The report (report.txt, the bundle's metrics) measures the new model as the device decodes it,
            # as the judge does: greedy there could say 100 % where the served model gets 92.
            "eval_beams": (options.decoding or DecodingOptions()).beam_size,
            "max_train_samples": first_n,
            "init_adapter": str(options.adapter) if options.start == WARM else None,
            **({"epochs": float(epochs)} if epochs else {}),
            "max_steps": None,
            "seed": options.seed,
            "force": options.force,
            "resume": False,
            **({"threads": options.threads} if options.threads else {}),
            **({"device": options.device} if options.device else {}),
        }
    )


def adapter_data(info: Any, adapter: Path) -> Path:
    """The recordings folder ``adapter`` was trained on (its train_config.json), which must still be there."""
    named = info.train_config.get("data")
    if not named or not (Path(named) / "labels.json").is_file():
        raise ResonanceError(
            f"the recordings '{adapter}' was trained on are not at '{named}' any more",
            "pass them with --data FOLDER (audio/*.wav + labels.json)",
        )
    return Path(named)


def previously_trained(adapter: Path) -> List[str]:
    """The new recordings (absolute paths) an adapter made by `resonance update` was trained on; [] otherwise."""
    path = Path(adapter) / UPDATE_FILE
    if not path.is_file():
        return []
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ResonanceError(
            f"{path} is not valid JSON: {exc}", "restore it, or delete it to start over"
        ) from exc
    return [str(p) for p in record.get("trained_new", [])]


def split_new(fresh: Sequence[Utterance], share: float, seed: int) -> tuple:
    """(held out, to train on): a random ``share`` of the fresh recordings, at least MIN_HELD_OUT, and never
    more than half of them (the new model must also learn from what the patient says now)."""
    n = min(max(MIN_HELD_OUT, round(share * len(fresh))), len(fresh) // 2)
    order = list(range(len(fresh)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    return (
        [u for i, u in enumerate(fresh) if i in held],
        [u for i, u in enumerate(fresh) if i not in held],
    )


def _key(utterance: Utterance) -> str:
    return str(Path(utterance.audio).resolve())


def _export_candidate(options: UpdateOptions, served: Path, manifest, held_out: Sequence[Utterance]) -> Path:
    from resonance.export.onnx_export import export_bundle

    quantize = {"fp32": "none", "int8": "int8", "fp16": "fp16"}[manifest.precision]
    quantization = manifest.quantization or {}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    candidate = served.parent / f".{served.name}.candidate-{stamp}"  # hidden: the server ignores it
    export_bundle(
        None,
        candidate,
        adapter=Path(options.out),
        quantize=quantize,
        int8_preset=quantization.get("int8_preset") if quantize == "int8" else None,
        int8_output=quantization.get("output_projection", "int8"),
        patient=served.name,
        # With their labels: parity then asks whether int8 loses accuracy against what was said, not whether it
        # repeats PyTorch's text word for word on a handful of clips (greedy paths part where a logit flips).
        parity_clips=list(held_out),
        dynamic_window=manifest.audio.dynamic_window,
        allow_worse=True,  # the judge below decides, on what the patient says now
    )
    return candidate


def render_text(result: UpdateResult) -> str:
    j = result.judgement
    c = j.comparison
    lines = [
        "Resonance update",
        "================",
        (
            "DEPLOYED: the new model is now served (the previous one is kept; `resonance rollback` brings it back)."
            if result.deployed
            else "NOT deployed: the new model was worse on the held-out recordings; the served model stays."
        ),
        f"why: {j.reason}",
        f"held-out new recordings: {result.n_held_out} ({c.n_phrases} phrases); character accuracy "
        f"served {100 * c.accuracy_a:.1f} % -> new {100 * c.accuracy_b:.1f} % "
        f"({100 * c.change:+.1f} points, 95 % interval {100 * c.low:+.1f} to {100 * c.high:+.1f}: {c.result})",
        ", ".join(f"{change} {n}" for change, n in j.counts().items()),
        f"trained on {result.n_train} recordings ({result.n_new_trained} new), {result.train_seconds:.0f} s",
        f"new adapter: {result.adapter}; candidate bundle: {result.candidate}",
        "",
        "per held-out recording: phrase | served model | new model | change",
        "  (" + "; ".join(f"{change}: {meaning}" for change, meaning in CHANGES.items()) + ")",
    ]
    for row in j.rows:
        lines.append(f"  {row['reference']} | {row['current']} | {row['new']} | {row['change']}")
    return "\n".join(lines) + "\n"


def as_json(result: UpdateResult) -> Dict[str, Any]:
    return {
        "deployed": result.deployed,
        "adapter": str(result.adapter),
        "candidate": str(result.candidate),
        "kept": str(result.kept) if result.kept else None,
        "judgement": result.judgement.to_json(),
    }
