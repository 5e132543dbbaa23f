"""Inference-PIO plugin for Qwen3-Coder-30B-A3B-Instruct (Qwen/Qwen3-Coder-30B-A3B-Instruct)."""

MODEL_NAME = "qwen3-coder-30b-a3b-instruct"
