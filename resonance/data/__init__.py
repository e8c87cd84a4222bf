"""Data layer: a patient's recordings in the guide's layout (audio/*.wav + labels.json).

labels   load_labels / save_labels / Utterance: what training reads (light: no audio is decoded)
check    check_dataset: every problem in a dataset, with what to do about it
convert  convert_dataset: any recordings -> 16 kHz mono 16-bit WAV + labels.json
record   record_session: record phrases with a microphone, resumable
"""

from resonance.data.labels import Utterance, load_labels, save_labels

__all__ = ["Utterance", "load_labels", "save_labels"]
