"""`resonance data record`: a helper records the speaker phrase by phrase, straight into the guide's layout.

Every kept take is written (audio/NNNN_<phrase>.wav, then labels.json, both atomically) before the next
phrase, so closing the window loses at most the take in progress; running the same command again resumes
with the phrases not yet recorded. Nothing already recorded is ever overwritten.

The microphone is just a callable ``seconds -> float32 samples at 16 kHz`` and the keyboard/screen are
``ask``/``say`` callables, so a whole session runs in tests without a sound card.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np

from resonance.constants import SAMPLE_RATE
from resonance.data.labels import AUDIO_DIR, LABELS_FILE, append_labels, load_labels, read_labels_json
from resonance.data.quality import MAX_SECONDS, Finding, level_findings, measure, trim_silence
from resonance.errors import ResonanceError
from resonance.fsutil import atomic_file, clean_stale_temporaries_in
from resonance.mic import open_input_device

Recorder = Callable[[float], np.ndarray]  # seconds -> mono float32 samples at SAMPLE_RATE
_UNSAFE = re.compile(r'[/\\:*?"<>|\s\x00-\x1f]+')  # not allowed in Windows/Unix file names, and spaces
_MAX_NAME_CHARS = 50  # 50 CJK characters = 150 UTF-8 bytes, well under the 255-byte file name limit
_CUT_OFF_MARGIN = 0.1  # speech this close to the end of the window was probably cut off

START_KEYS = "[Enter] record   s skip   q quit > "
TAKE_KEYS = "[Enter] keep   r redo   s skip   q quit > "


@dataclass(frozen=True)
class RecordSummary:
    kept: int  # takes written in this session
    skipped: int  # phrases skipped in this session
    remaining: int  # phrases of the list still without a recording
    finished: bool  # False when the helper quit (or closed input) before the end of the list


def read_phrases(path: Union[str, Path]) -> List[str]:
    """One phrase per line; blank lines and lines starting with # are ignored."""
    path = Path(path)
    if not path.is_file():
        raise ResonanceError(f"phrase list '{path}' not found", "write the phrases to record, one per line")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise ResonanceError(f"'{path}' is not UTF-8 text", "save the phrase list as UTF-8") from exc
    phrases = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not phrases:
        raise ResonanceError(f"'{path}' has no phrases", "write the phrases to record, one per line")
    return phrases


def safe_file_name(text: str) -> str:
    """The phrase as a file name part: characters unsafe in file names (and spaces) become '_'."""
    return _UNSAFE.sub("_", text).strip("._")[:_MAX_NAME_CHARS]


def record_session(
    phrases: Sequence[str],
    out_dir: Union[str, Path],
    recorder: Recorder,
    seconds: float = 4.0,
    ask: Callable[[str], str] = input,
    say: Callable[[str], Any] = print,
) -> RecordSummary:
    """Record each phrase not yet in ``out_dir``; the helper keeps, redoes or skips every take."""
    if not 0.5 <= seconds <= MAX_SECONDS:
        raise ResonanceError(
            f"--seconds {seconds:g} is out of range", f"use 0.5 to {MAX_SECONDS:g} s; 4 suits short phrases"
        )
    out_dir = Path(out_dir)
    recorded = _recorded(out_dir)
    (out_dir / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries_in(out_dir / AUDIO_DIR)  # a take being written when the last session was killed
    todo = _not_yet_recorded(phrases, recorded)
    say(
        f"{len(phrases) - len(todo)} of {len(phrases)} phrases already recorded in {out_dir}; {len(todo)} to go"
    )
    kept = skipped = 0
    for number, phrase in enumerate(todo, 1):
        say(f"\n[{number}/{len(todo)}]  {phrase}")
        try:
            take = _take(phrase, recorder, seconds, ask, say)
        except (EOFError, KeyboardInterrupt):
            take = "quit"
        if isinstance(take, np.ndarray):
            name = _write_take(out_dir, phrase, take)
            # Appended, not rewritten: the entries already there keep every byte (and every extra key).
            append_labels(out_dir, [{"audio": f"{AUDIO_DIR}/{name}", "text": phrase}])
            kept += 1
            say(f"  saved {AUDIO_DIR}/{name}")
        elif take == "skip":
            skipped += 1
        else:
            remaining = len(todo) - number + 1
            say(f"\nstopped: {kept} kept this session, {remaining} left. Run the same command to continue.")
            return RecordSummary(kept, skipped, remaining, finished=False)
    say(f"\ndone: {kept} kept, {skipped} skipped. Next: resonance data check {out_dir}")
    return RecordSummary(kept, skipped, skipped, finished=True)


def _recorded(out_dir: Path) -> List[str]:
    """The texts already in out_dir/labels.json (files not required: the helper may have moved some)."""
    if not (out_dir / LABELS_FILE).exists() or read_labels_json(out_dir) == []:
        return []
    return [u.text for u in load_labels(out_dir, check_files=False)]


def _not_yet_recorded(phrases: Sequence[str], recorded: Sequence[str]) -> List[str]:
    """Phrases without a recording; a phrase listed twice needs two recordings."""
    done = Counter(recorded)
    todo = []
    for phrase in phrases:
        if done[phrase] > 0:
            done[phrase] -= 1
        else:
            todo.append(phrase)
    return todo


def _take(
    phrase: str, recorder: Recorder, seconds: float, ask: Callable, say: Callable
) -> Union[np.ndarray, str]:
    """Record until the helper keeps a take (returned) or answers 'skip' / 'quit'."""
    key = _ask_key(ask, START_KEYS)
    while key not in ("s", "q"):  # Enter or r: record (again)
        say(f"  recording {seconds:g} s … speak now")
        raw = np.asarray(recorder(seconds), dtype=np.float32).reshape(-1)
        take = trim_silence(raw, SAMPLE_RATE)
        findings = take_findings(raw, take, seconds)
        for finding in findings:
            say(f"  {finding.severity}: {finding.message} — {finding.fix}")
        if not findings:
            say(f"  ok: {len(take) / SAMPLE_RATE:.1f} s of speech")
        key = _ask_key(ask, TAKE_KEYS)
        while key == "" and take.size == 0:
            key = _ask_key(ask, "nothing to keep: r redo, s skip, q quit > ")
        if key == "":
            return take
    return "skip" if key == "s" else "quit"


def _ask_key(ask: Callable[[str], str], prompt: str) -> str:
    """'' (Enter), 'r', 's' or 'q'; anything else is asked again."""
    key = ask(prompt).strip().lower()[:1]
    while key not in ("", "r", "s", "q"):
        key = ask("type Enter, r, s or q > ").strip().lower()[:1]
    return key


def take_findings(raw: np.ndarray, take: np.ndarray, seconds: float) -> List[Finding]:
    """What is wrong with a take, in words the helper can act on."""
    if take.size == 0:
        return [
            Finding(
                "error",
                "silent",
                "heard nothing",
                "check the microphone is on (choose it with --device), speak closer, then r to redo",
            )
        ]
    found = level_findings(measure(take, SAMPLE_RATE))
    if measure(raw, SAMPLE_RATE).speech_end >= len(raw) / SAMPLE_RATE - _CUT_OFF_MARGIN:
        found.append(
            Finding(
                "warning",
                "cut-off",
                f"still speaking at the end of the {seconds:g} s window: the end may be cut off",
                f"r to redo, starting sooner, or record with --seconds {seconds + 2:g}",
            )
        )
    return found


def _write_take(out_dir: Path, phrase: str, samples: np.ndarray) -> str:
    """Write audio/NNNN_<phrase>.wav under a number no existing file uses; return the file name."""
    import soundfile as sf

    audio_dir = out_dir / AUDIO_DIR
    number = _next_number(audio_dir)
    stem = safe_file_name(phrase)
    while True:
        name = f"{number:04d}_{stem}.wav" if stem else f"{number:04d}.wav"
        if not (audio_dir / name).exists():
            break
        number += 1
    with atomic_file(audio_dir / name) as tmp:
        sf.write(str(tmp), np.clip(samples, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return name


def _next_number(audio_dir: Path) -> int:
    numbers = [int(m.group(1)) for p in audio_dir.iterdir() if (m := re.match(r"(\d+)", p.name))]
    return max(numbers, default=0) + 1


def microphone(device: Optional[Union[int, str]] = None) -> Recorder:
    """A Recorder on a real input device (sounddevice), or a ResonanceError saying what to plug in."""
    sd, native = open_input_device(device, "recording")

    def record(seconds: float) -> np.ndarray:
        from resonance.audio import resample

        audio = sd.rec(int(seconds * native), samplerate=native, channels=1, dtype="float32", device=device)
        sd.wait()
        return resample(audio.reshape(-1), native, SAMPLE_RATE)

    return record
