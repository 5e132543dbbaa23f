"""Inference-PIO plugin for Qwen3-0.6B (Qwen/Qwen3-0.6B)."""

MODEL_NAME = "qwen3-0.6b"
