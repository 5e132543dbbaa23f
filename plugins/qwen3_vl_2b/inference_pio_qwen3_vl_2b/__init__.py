"""Inference-PIO plugin for Qwen3-VL-2B-Instruct (Qwen/Qwen3-VL-2B-Instruct)."""

MODEL_NAME = "qwen3-vl-2b-instruct"
