"""Secrets in settings: never stored, never shown, and moved out of URLs where they are used.

A credential written into a URL setting (``tracking.uri=http://user:pass@host``,
``postgresql://user:pass@host/db``) or into a key that names one (``...password``, ``...token``) would
otherwise be copied wherever the config goes: a run's params and tags, ``config.json``, checkpoints,
logged models, reports, log lines. Everything btxrd writes or prints passes through ``redact_text``
or ``redact_config``, which replace it with ``***``.

Where a URL is used to connect, ``move_credentials`` takes its credentials out of it into the
variables its client reads anyway: MLflow's ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``
for a tracking server, libpq's ``PGPASSWORD`` for PostgreSQL. The URL that remains holds no secret, so
neither MLflow's own messages nor Hydra's files and log lines can show one.

Standard library only: every layer may use it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

REDACTED = "***"
USERNAME_ENV, PASSWORD_ENV, TOKEN_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"
PGPASSWORD_ENV = "PGPASSWORD"

# Names are at most this long in the patterns below: a bounded, anchored name keeps every pattern linear
# in the text (an unbounded one took 80 s on a 40,000-character 'a.a.a...' from a hostile sheet).
_NAME = r"(?<![\w.\-])[\w.\-]{0,64}?"
# scheme://USERINFO@ : the user-info part of any URL in a text, up to its last '@' before a space (a password
# may hold an unencoded '/', '@' or quote; a username alone may be a token). Hiding too much is the safe side.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]{0,31}://)(?P<userinfo>[^\s\"<>`]{1,512})@")
_SECRET_WORDS = r"password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|credentials?|private[_-]?key"
# Query parameters that carry a secret (PostgreSQL's ?password=, presigned URLs' signatures, API keys)
_SECRET_QUERY = re.compile(
    rf"(?P<name>[?&;][\w.\-]{{0,64}}?(?:{_SECRET_WORDS}|sig|signature)=)[^&;#\s'\"<>`]+", re.IGNORECASE
)
# A setting whose name ends in one of those words holds a secret: ``db.password``, ``api_token``,
# ``client_secret`` (not ``max_tokens`` or ``hidden_secrets``); its whole value is hidden
_SECRET_KEY = re.compile(rf"(?:{_SECRET_WORDS})$", re.IGNORECASE)
# key=value or key: value text (a Hydra override, a log line) whose key names a secret; the value may be quoted
_SECRET_ASSIGNMENT = re.compile(
    rf"(?P<key>{_NAME}(?:{_SECRET_WORDS})[ \t]*[=:][ \t]*)"
    r"(?P<value>'[^'\n]*'|\"[^\"\n]*\"|[^\s,'\"]+)",
    re.IGNORECASE,
)


def redact_text(text: str) -> str:
    """``text`` with the user-info of every URL, secret query parameters and ``password=...`` values hidden."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    text = _SECRET_QUERY.sub(lambda m: f"{m['name']}{REDACTED}", text)
    # a value hidden above (a URL's query parameter) is left as it is, with what follows it
    return _SECRET_ASSIGNMENT.sub(
        lambda m: m["key"] + (m["value"] if m["value"].startswith(REDACTED) else REDACTED), text
    )


def is_secret_key(key: str) -> bool:
    """Whether a setting's name says it holds a secret (its last component: ``db.password``, ``api_token``)."""
    return bool(_SECRET_KEY.search(str(key).rsplit(".", 1)[-1].strip()))


def redact_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(a copy of ``config`` with every secret hidden, the dotted keys whose values were changed)."""
    changed: list[str] = []
    return redact_value(config, "", changed), changed


def redact_value(value: Any, name: str = "", changed: list[str] | None = None, secret: bool = False) -> Any:
    """A copy of any nest of mappings, lists and strings (a config, a YAML document) with every secret
    hidden: under a key that names one, every string; elsewhere, what ``redact_text`` hides. ``changed``
    collects the dotted names of what was hidden."""
    if isinstance(value, Mapping):
        return {
            key: redact_value(item, f"{name}.{key}" if name else str(key), changed, secret or is_secret_key(str(key)))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact_value(item, name, changed, secret) for item in value)
    if secret and value not in (None, "", REDACTED) and not isinstance(value, bool):  # a flag holds no secret
        hidden: Any = REDACTED
    elif isinstance(value, str):
        hidden = redact_text(value)
    else:
        return value
    if hidden != value and changed is not None and name not in changed:
        changed.append(name)
    return hidden


def has_secret(text: str) -> bool:
    return redact_text(text) != text


def move_credentials(uri: str) -> tuple[str, dict[str, str]]:
    """(``uri`` without the credentials its client can read from the environment, those variables).

    ``http(s)://user:pass@host`` -> ``http(s)://host`` with MLflow's username and password variables;
    ``postgresql[+psycopg|+psycopg2]://user:pass@host/db`` -> ``postgresql://user@host/db`` with
    libpq's ``PGPASSWORD``. Any other URL is returned as it is (its secret is still hidden wherever it
    is shown).
    """
    try:
        parts = urlsplit(uri)
        password, username, host = parts.password, parts.username, parts.hostname
    except ValueError:  # not a URL (a bad port, say): whatever uses it says so
        return uri, {}
    if not password or not username or not host:
        return uri, {}
    netloc = parts.netloc.rsplit("@", 1)[1]
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        env = {USERNAME_ENV: unquote(username), PASSWORD_ENV: unquote(password)}
    elif scheme in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):  # drivers on libpq
        env, netloc = {PGPASSWORD_ENV: unquote(password)}, f"{username}@{netloc}"
    else:
        return uri, {}
    return urlunsplit(parts._replace(netloc=netloc)), env


def without_userinfo(url: str) -> str:
    """``url`` with no user-info at all (a link to a web page needs none: the browser asks)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class RedactingFilter(logging.Filter):
    """A logging filter (on a handler) that hides secrets in every record it passes: Hydra's launcher
    prints each job's overrides, MLflow and SQLAlchemy may print a store's URL."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = redact_text(message)
        if hidden != message:
            record.msg, record.args = hidden, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        return True
