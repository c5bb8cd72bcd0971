"""What the commands print: warnings without colour codes where nobody sees colours."""

from __future__ import annotations

import os
import re
import sys
import warnings

ANSI_CODE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def plain_warnings() -> None:
    """Warnings without ANSI colour codes (MLflow colours some) when ``NO_COLOR`` is set
    (https://no-color.org) or stderr is not a terminal."""
    if not os.environ.get("NO_COLOR") and sys.stderr.isatty():
        return
    show = warnings.formatwarning
    if getattr(show, "plain", False):
        return

    def formatwarning(message, category, filename, lineno, line=None):
        return ANSI_CODE.sub("", show(message, category, filename, lineno, line))

    formatwarning.plain = True
    warnings.formatwarning = formatwarning
