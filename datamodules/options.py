"""Option values as people type them, read the same way by the CLI and the HTTP service."""

from __future__ import annotations


def csv_list(text: str | None) -> list[str] | None:
    """``"a, b,,c"`` → ``["a", "b", "c"]``; None (or nothing but commas) → None."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else None
