"""``inference-pio-cli`` directive: the CLI reference, rendered from the real argparse parser.

The parser is built by :func:`inference_pio.cli.build_parser` with a fresh plugin host that has no
plugins loaded, so the page shows exactly the core's commands and options, as ``--help`` does.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

WIDTH = "100"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


class CliReference(SphinxDirective):
    """Emits ``--help`` of the top-level parser and of every sub-command."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from inference_pio.cli import build_parser
        from inference_pio.plugins import PluginHost

        old = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = WIDTH  # argparse wraps to the terminal width: make it fixed
        try:
            parser = build_parser(PluginHost(strict=True))
            result: list[nodes.Node] = [self._block(parser.format_help())]
            for name, sub in _subcommands(parser).items():
                result.append(nodes.rubric(text=f"inference-pio {name}", ids=[f"cli-{name}"]))
                result.append(self._block(sub.format_help()))
        finally:
            if old is None:
                del os.environ["COLUMNS"]
            else:
                os.environ["COLUMNS"] = old
        return result

    @staticmethod
    def _block(text: str) -> nodes.literal_block:
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return block


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("inference-pio-cli", CliReference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
