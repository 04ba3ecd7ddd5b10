"""Shared entry-point wrapper: user errors become one line on stderr and a non-zero exit."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from btxrd.errors import BTXRDError
from btxrd.redaction import redact_text

USER_ERROR_EXIT = 2
BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader went away


def run_cli(main: Callable[[], int | None]) -> int:
    """Run ``main``; a ``BTXRDError`` prints ``error: <message>`` (secrets hidden) and exits with code 2.
    Output piped into a reader that stops early (``| head``) ends quietly, as other Unix tools do."""
    try:
        code = int(main() or 0)
        sys.stdout.flush()  # here, where a closed pipe can be caught, not at exit
        return code
    except BTXRDError as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return USER_ERROR_EXIT
    except BrokenPipeError:
        # Python would print a traceback flushing stdout at exit: point it at /dev/null instead
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_EXIT
