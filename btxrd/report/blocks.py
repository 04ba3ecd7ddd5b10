"""Blocks of the documentation that a command writes (``make evidence``, ``make bench``): each lies between
``<!-- evidence NAME -->`` and ``<!-- /evidence NAME -->`` in one page (README.md or docs/*.md) and is
replaced whole, so a re-run shows in ``git diff`` as exactly what moved."""

from __future__ import annotations

import re
from pathlib import Path

from btxrd.errors import ConfigError


def opening(name: str) -> str:
    return f"<!-- evidence {name} -->"


def closing(name: str) -> str:
    return f"<!-- /evidence {name} -->"


def pages(root: Path) -> list[Path]:
    """The project's documentation pages: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def page_holding(root: Path, name: str) -> Path:
    """The one page of the project at ``root`` that holds the block ``name``."""
    holding = [page for page in pages(root) if page.is_file() and name in blocks_in(page)]
    if len(holding) != 1:
        found = ", ".join(str(page.relative_to(root)) for page in holding) or "none"
        raise ConfigError(
            f"{root}: the block {opening(name)} must be in exactly one of README.md and docs/*.md (found in: {found})"
        )
    return holding[0]


def write_block(page: Path, name: str, text: str) -> None:
    """Replace the block ``name`` in ``page`` (markers included) with ``text``."""
    pattern = re.compile(rf"{re.escape(opening(name))}.*?{re.escape(closing(name))}", re.DOTALL)
    content = page.read_text()
    if not pattern.search(content):
        raise ConfigError(f"{page}: no block {opening(name)} ... {closing(name)} to write")
    page.write_text(pattern.sub(lambda _: text, content, count=1))


def blocks_in(page: Path) -> list[str]:
    """The names of the blocks ``page`` holds, in order."""
    named = re.escape(opening("NAME")).replace("NAME", r"([\w-]+)")
    return re.findall(named, page.read_text())
