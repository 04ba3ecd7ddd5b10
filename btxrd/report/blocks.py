"""Blocks of README.md that a command writes (``make evidence``, ``make bench``): each lies between
``<!-- evidence NAME -->`` and ``<!-- /evidence NAME -->`` and is replaced whole, so a re-run shows in
``git diff README.md`` as exactly what moved."""

from __future__ import annotations

import re
from pathlib import Path

from btxrd.errors import ConfigError


def opening(name: str) -> str:
    return f"<!-- evidence {name} -->"


def closing(name: str) -> str:
    return f"<!-- /evidence {name} -->"


def write_block(readme: Path, name: str, text: str) -> None:
    """Replace the block ``name`` in ``readme`` (markers included) with ``text``."""
    pattern = re.compile(rf"{re.escape(opening(name))}.*?{re.escape(closing(name))}", re.DOTALL)
    content = readme.read_text()
    if not pattern.search(content):
        raise ConfigError(f"{readme}: no block {opening(name)} ... {closing(name)} to write")
    readme.write_text(pattern.sub(lambda _: text, content, count=1))


def blocks_in(readme: Path) -> list[str]:
    """The names of the blocks ``readme`` holds, in order."""
    named = re.escape(opening("NAME")).replace("NAME", r"([\w-]+)")
    return re.findall(named, readme.read_text())
