"""Data layer: a patient's recordings in the guide's layout (audio/*.wav + labels.json)."""
