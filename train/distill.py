"""A regulariser that keeps the generic model's language: KL to the generic decoder (``--distill-weight``).

Fifty short phrases are enough for a trained decoder to learn the phrases' *language* (which words follow
which) instead of the speaker's *acoustics*, and then to bend new sentences towards the recorded ones. The
teacher is a frozen copy of the generic decoder fed the *trained* encoder's output: it says what generic
Whisper would write given what the adapted encoder heard, so the term pulls only the decoder's language back
and leaves the acoustic adaptation free. (The whole generic model is no teacher here: on the shortened audio
window the generic encoder collapses, and at 30 s it would cost six times the encoder work.)
"""

from __future__ import annotations

import copy


class GenericDecoderTeacher:
    def __init__(self, model):
        """Copies ``model``'s decoder now: call it before any training touches the model."""
        self.decoder = copy.deepcopy(model.get_decoder()).eval().requires_grad_(False)

    def to(self, device) -> GenericDecoderTeacher:
        self.decoder.to(device)
        return self

    def logits(self, decoder_input_ids, encoder_hidden_states):
        """Next-token logits of the generic decoder (proj_out is tied to the token embeddings)."""
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            hidden = self.decoder(
                input_ids=decoder_input_ids, encoder_hidden_states=encoder_hidden_states.detach()
            ).last_hidden_state
            return F.linear(hidden, self.decoder.embed_tokens.weight)


def kl_to_teacher(student_logits, teacher_logits, labels):
    """Mean over the trained token positions (labels != -100) of KL(teacher || student)."""
    import torch.nn.functional as F

    keep = labels != -100
    student = F.log_softmax(student_logits[keep].float(), dim=-1)
    teacher = F.log_softmax(teacher_logits[keep].float(), dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")
