"""User-facing errors: one readable line, no traceback, non-zero exit."""

from __future__ import annotations


class BTXRDError(Exception):
    """An error the user can fix (bad path, bad column, bad override).

    Entry points catch it and print ``error: <message>`` as a single line; the
    message must name the file, column or config key at fault.
    """


class DataError(BTXRDError):
    """The dataset on disk is missing, incomplete or inconsistent."""


class ConfigError(BTXRDError):
    """A configuration value is out of range or refers to something that does not exist."""


class StorageError(BTXRDError):
    """A file could not be written (a full disk, a read-only folder); the message names it and the room left."""
