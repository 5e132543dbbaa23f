"""Inference-PIO plugin for Qwen3-Coder-Next (Qwen/Qwen3-Coder-Next)."""

MODEL_NAME = "qwen3-coder-next"
