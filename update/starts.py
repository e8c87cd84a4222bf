"""How `resonance update` trains: on from the current adapter (warm) or again from the base model (scratch).

Plain values, no imports: the CLI builds `--start`'s choices and default from them without loading numpy/torch.
"""

WARM, SCRATCH = "warm", "scratch"
STARTS = (WARM, SCRATCH)
# Scratch by default: measured head to head on speaker A (`resonance eval loop`, seed 0, full fine-tuning of the
# encoder), the update from the base model on old + new recordings was ahead of the warm start in every round on
# the phrases the patient used (README, "Does the loop work?"), for ~2.7x the training steps of a warm update.
DEFAULT_START = SCRATCH
