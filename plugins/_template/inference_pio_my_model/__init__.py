"""Inference-PIO plugin for My-Model (template: rename me)."""

#: The name users pass to --model; lower case, unique across installed plugins.
MODEL_NAME = "my-model"
