"""Training layer (resonance.train): base-model import, LoRA fine-tuning per patient, CER evaluation.

Importing this package is light; torch/transformers/peft load only inside the functions that need them.
"""
