"""An auxiliary CTC loss on the encoder's output: spell each recording's Mandarin initials and finals.

Why (the recipe study, README): the personal model gets 90 % of the characters right that the speaker recorded
in another phrase and 59 % of those whose syllable was never recorded. A new syllable is mostly made of parts
heard before (tang: the t of 疼, the ang of 上), so a loss that asks the encoder for those parts, frame by
frame, might carry the voice's sounds over to new syllables better than the decoder's loss alone, which only
asks for whole characters. The head is a linear layer used in training only: the adapter and the bundle do not
hold it, and the frozen decoder reads the encoder as before.
"""

from __future__ import annotations

import math

from resonance.train.coverage import pinyin_parts

PHONE_HEAD_LEARNING_RATE = 1e-3  # the head starts random; the encoder's 5e-5 would leave it near chance
ENCODER_FRAMES_PER_SECOND = 50  # Whisper: 100 mel frames a second, halved by the encoder's second convolution


class PhoneCTC:
    """A linear layer (``proj``) from the encoder's output to initials/finals (+ blank 0), with its CTC loss."""

    def __init__(self, d_model: int, texts: list[str], device):
        import torch  # the trainer's lazy import: `resonance --help` never loads torch

        units = sorted({part for text in texts for part in pinyin_parts(text)})
        self.index = {unit: i + 1 for i, unit in enumerate(units)}  # 0 is CTC's blank
        self.proj = torch.nn.Linear(d_model, len(units) + 1).to(device)

    def loss(self, hidden, texts: list[str], seconds: list[float]):
        """Mean CTC loss of the batch; ``hidden``: (batch, frames, d_model), the encoder's last hidden state."""
        import torch

        log_probs = self.proj(hidden.float()).log_softmax(-1).transpose(0, 1)  # (frames, batch, units)
        frames = hidden.shape[1]
        targets = [[self.index[p] for p in pinyin_parts(text) if p in self.index] for text in texts]
        input_lengths = [min(frames, math.ceil(s * ENCODER_FRAMES_PER_SECOND)) for s in seconds]
        return torch.nn.functional.ctc_loss(
            log_probs,
            torch.tensor([unit for target in targets for unit in target], dtype=torch.long),
            torch.tensor(input_lengths, dtype=torch.long),
            torch.tensor([len(t) for t in targets], dtype=torch.long),
            blank=0,
            zero_infinity=True,  # a recording too short for its units adds nothing rather than inf
        )
