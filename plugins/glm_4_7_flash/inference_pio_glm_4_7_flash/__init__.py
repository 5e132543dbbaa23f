"""Inference-PIO plugin for GLM-4.7-Flash (zai-org/GLM-4.7-Flash)."""

MODEL_NAME = "glm-4.7-flash"
