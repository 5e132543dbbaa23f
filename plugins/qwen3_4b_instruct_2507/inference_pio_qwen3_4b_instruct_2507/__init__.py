"""Inference-PIO plugin for Qwen3-4B-Instruct-2507 (Qwen/Qwen3-4B-Instruct-2507)."""

MODEL_NAME = "qwen3-4b-instruct-2507"
