"""Shared entry-point wrapper: user errors become one line on stderr and a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable

from btxrd.errors import BTXRDError

USER_ERROR_EXIT = 2


def run_cli(main: Callable[[], int | None]) -> int:
    """Run ``main``; a ``BTXRDError`` prints ``error: <message>`` and exits with code 2."""
    try:
        return int(main() or 0)
    except BTXRDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT
