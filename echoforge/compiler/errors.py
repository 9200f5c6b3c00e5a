"""The compiler's one error class and its one-line message format."""

from __future__ import annotations


class IRError(ValueError):
    """An HWIR, or a source being compiled to one, that cannot be used. The message is one line:
    the file (and node), what is wrong, and what to do."""


def fail(where: str, node: str | None, problem: str, fix: str) -> IRError:
    """Build the error `file: node 'x': problem — fix`, newlines in any part flattened."""
    at = f"{where}: node {node!r}: " if node else f"{where}: "
    return IRError(" ".join(f"{at}{problem} — {fix}".split()))
