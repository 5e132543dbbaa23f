"""OpenAI-compatible HTTP serving (``inference-pio serve``; the ``server`` extra)."""

from __future__ import annotations

from inference_pio.server.app import create_app, serve

__all__ = ["create_app", "serve"]
