"""Training examples: audio loaded once, features per batch (with optional augmentation), padded labels."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from resonance.audio import SAMPLE_RATE, load_audio
from resonance.data.labels import Utterance, load_labels
from resonance.errors import ResonanceError

if TYPE_CHECKING:
    from resonance.train.config import TrainConfig


@dataclass(frozen=True)
class Recordings:
    """What one training run learns from, and the recordings it is measured on (empty: the validation split)."""

    train: list[Utterance]
    eval: list[Utterance] = field(default_factory=list)
    eval_source: str | None = None  # what the report says the eval recordings are
    # The eval recordings are the patient's own, held out of training (resonance update), so their phrases
    # are recorded phrases too (on the phrase board); a second take passed as --eval-data adds none.
    eval_recorded: bool = False

    def recorded_phrases(self) -> list[str]:
        """Every phrase of the patient's training data, in first-seen order: the phrase board export writes."""
        own = self.train + (self.eval if self.eval_recorded else [])
        return list(dict.fromkeys(u.text for u in own))

    @classmethod
    def of(cls, config: TrainConfig) -> Recordings:
        """``config.data`` (``max_train_samples`` of it, see ``--pick``) and ``config.eval_data``, labels checked."""
        train = training_subset(_labels_of(config.data, "--data"), config.max_train_samples, config.pick)
        if not config.eval_data:
            return cls(train)
        return cls(train, _labels_of(config.eval_data, "--eval-data"), config.eval_data)


def _labels_of(folder: str, option: str) -> list[Utterance]:
    """``folder``'s checked labels; a problem names the option, since train reads two folders alike."""
    try:
        return load_labels(folder)
    except ResonanceError as exc:
        raise ResonanceError(f"{option}: {exc.message}", exc.hint) from exc


def training_subset(utterances: list[Utterance], count: int | None, pick: str = "first") -> list[Utterance]:
    """The ``count`` recordings a run trains on (all when None): the first as listed, or with pick "sounds" the
    ones that hold the most different syllables (train/coverage.py), kept in their listed order."""
    if count is None or count >= len(utterances):
        return list(utterances)
    if pick == "first":
        return utterances[:count]
    from resonance.train.coverage import order_by_sounds

    chosen = {id(u) for u in order_by_sounds(utterances, text=lambda u: u.text)[:count]}
    return [u for u in utterances if id(u) in chosen]


@dataclass
class Example:
    text: str
    audio: np.ndarray  # float32 mono 16 kHz
    label_ids: list[int]  # <|zh|><|transcribe|><|notimestamps|> text <|endoftext|>, without the leading SOT
    rel: str = ""
    path: Path | None = None  # the audio file, to tell a test recording that was also trained on

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def load_examples(utterances: list[Utterance], tokenizer, max_tokens: int | None = None) -> list[Example]:
    """Each utterance's audio and label tokens; ``max_tokens``: the decoder's length (448 for Whisper)."""
    examples = []
    for utt in utterances:
        ids = tokenizer(utt.text).input_ids  # SOT sequence (prefix tokens set by the caller) ... EOT
        if max_tokens is not None and len(ids) > max_tokens:
            raise ResonanceError(
                f"the label of {utt.rel} is {len(ids):,} tokens long; Whisper writes at most {max_tokens} "
                "for one recording",
                "write only what is said in that recording (`resonance data check` flags such labels)",
            )
        examples.append(Example(utt.text, _load_recording(utt), ids[1:], utt.rel, Path(utt.audio)))
    return examples


def _load_recording(utt: Utterance) -> np.ndarray:
    """The clip's audio; a bad file named, with what to do about a dataset (the loader speaks of uploads)."""
    try:
        return load_audio(utt.audio)
    except ResonanceError as exc:
        raise ResonanceError(
            f"{utt.rel}: {exc.message}",
            "copy the recording again, or remove it from labels.json; `resonance data check` on the data "
            "folder lists every such file",
        ) from exc


def count_trained_on(train_set: list[Example], eval_set: list[Example]) -> int:
    """How many test recordings are recordings trained on (``--eval-data`` the training data, or sharing its
    files): the model heard those very clips, so its score on them says little about the next time.
    Compared by resolved path, so "take1" and "./take1/" or a link to it are the same recordings."""
    trained = {os.path.realpath(e.path) for e in train_set if e.path is not None}
    return sum(e.path is not None and os.path.realpath(e.path) in trained for e in eval_set)


def split_examples(
    examples: list[Example], val_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Hold out whole phrases (every take of a text), so validation measures phrases the model never heard."""
    if val_fraction <= 0:
        return examples, []
    texts = sorted({e.text for e in examples})
    random.Random(seed).shuffle(texts)
    n_val = max(1, round(len(texts) * val_fraction))
    held = set(texts[:n_val])
    return [e for e in examples if e.text not in held], [e for e in examples if e.text in held]


PREFIX_TOKENS = 3  # <|zh|> <|transcribe|> <|notimestamps|> follow SOT in every label


class Augmenter:
    """Waveform perturbations suited to one speaker's few clips: speed, gain and background noise."""

    def __init__(self, seed: int, speeds=(0.9, 1.0, 1.1), gain_db=6.0, snr_db=(15.0, 40.0), noise_prob=0.5):
        self.rng = np.random.default_rng(seed)
        self.speeds, self.gain_db, self.snr_db, self.noise_prob = speeds, gain_db, snr_db, noise_prob

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        import soxr

        speed = self.rng.choice(self.speeds)
        if speed != 1.0:  # resampling changes tempo and pitch together, like Kaldi's speed perturbation
            audio = soxr.resample(audio, SAMPLE_RATE * speed, SAMPLE_RATE).astype(np.float32)
        audio = audio * np.float32(10 ** (self.rng.uniform(-self.gain_db, self.gain_db) / 20))
        if self.rng.random() < self.noise_prob and audio.size:
            power = float(np.mean(audio**2)) + 1e-12
            snr = self.rng.uniform(*self.snr_db)
            noise = self.rng.standard_normal(audio.size).astype(np.float32)
            audio = audio + noise * np.float32(np.sqrt(power / 10 ** (snr / 10)))
        return np.clip(audio, -1.0, 1.0)


def collate(
    batch: list[Example], feature_extractor, window_seconds: float, sot_id: int, pad_id: int, augment=None
):
    """-> input_features (B, mels, frames), decoder_input_ids (B, T), labels (B, T) with -100 on padding/prefix."""
    import torch

    n_samples = int(window_seconds * SAMPLE_RATE)
    audios = [augment(e.audio) if augment else e.audio for e in batch]
    audios = [a[:n_samples] for a in audios]
    features = feature_extractor(
        audios, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding="max_length", max_length=n_samples
    ).input_features
    longest = max(len(e.label_ids) for e in batch)
    decoder_input = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), longest), -100, dtype=torch.long)
    for row, example in enumerate(batch):
        ids = example.label_ids
        decoder_input[row, : len(ids)] = torch.tensor([sot_id, *ids[:-1]])  # teacher forcing: shifted right
        labels[row, : len(ids)] = torch.tensor(ids)
        labels[
            row, :PREFIX_TOKENS
        ] = -100  # language/task/notimestamps are forced at inference: no loss there
    return features, decoder_input, labels
