"""Test helpers for Inference-PIO and its plugins (test-only: they import torch/transformers).

``tiny`` builds tiny random Hugging Face checkpoints of a plugin's exact architecture so a
plugin's tests can compare it with transformers.
"""
