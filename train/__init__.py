"""Training layer (resonance.train): base-model import, fine-tuning per patient (the encoder, or LoRA), CER.

Importing this package is light; torch/transformers/peft load only inside the functions that need them.
"""
