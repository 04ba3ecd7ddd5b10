"""Reaching a tracking store: what a store that does not answer or cannot be written raises, retries while
SQLite is busy, and the probes of a server or a database made before a run is opened (MLflow's own
retries would block for minutes, then end in a traceback that may echo a password)."""

from __future__ import annotations

import base64
import errno
import os
import re
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from mlflow.exceptions import MlflowException

from btxrd.errors import BTXRDError
from btxrd.redaction import PASSWORD_ENV, TOKEN_ENV, USERNAME_ENV, redact_text, without_userinfo

T = TypeVar("T")
_RETRIES = 8


class TrackingUnreachable(BTXRDError):
    """The tracking server did not answer (refused, timed out, or only 5xx errors) after MLflow's retries."""


class StoreFull(TrackingUnreachable):
    """The store cannot take writes: the disk of its database or artifacts is full. Like a server that
    does not answer, a job keeps its writes and sends them once there is room again."""


# How a full disk is worded by SQLite (through SQLAlchemy and MLflow) and by the OS
_FULL = ("database or disk is full", "no space left on device", "disk quota exceeded")
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def store_full(exc: BaseException, where: str) -> StoreFull | None:
    """``exc`` as a ``StoreFull`` naming ``where`` when it says a disk is full, else None."""
    full = (isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS) or (
        isinstance(exc, MlflowException) and any(word in str(exc).lower() for word in _FULL)
    )
    store = f"the tracking store {where}" if where else "the tracking store"
    return StoreFull(f"{store} cannot be written: no space left on device") if full else None


# MLflow's REST client words every failure to get an answer this way (rest_utils.http_request)
_NO_ANSWER = re.compile(r"^API request to (?P<url>\S+) failed with (?P<why>.*)", re.DOTALL)
_WHY = (
    (re.compile(r"\[Errno -?\d+\] (?P<why>[^'\")]+)"), "{why}"),
    (re.compile(r"timed? ?out", re.I), "timed out"),
    (re.compile(r"too many (?P<code>\d{3}) error responses"), "HTTP {code} responses"),
)


def unreachable(exc: BaseException) -> TrackingUnreachable | None:
    """``exc`` as a ``TrackingUnreachable`` when it says the tracking server did not answer, else None."""
    found = _NO_ANSWER.match(str(exc)) if isinstance(exc, MlflowException) else None
    if found is None:
        return None
    server = without_userinfo(re.split(r"/(?:ajax-)?api/", found["url"])[0])
    why = next(
        (form.format(**m.groupdict()) for pattern, form in _WHY if (m := pattern.search(found["why"]))), "no answer"
    )
    return TrackingUnreachable(f"the tracking server {server} does not answer ({why.strip()})")


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


# SQLAlchemy URLs of database servers (dialect, optionally +driver), which MLflow can use as its store
_DATABASES = ("postgresql", "postgres", "mysql", "mariadb", "mssql", "oracle")


def is_database_server(uri: str) -> bool:
    return uri.split("://", 1)[0].split("+", 1)[0].lower() in _DATABASES


def database_problem(uri: str, seconds: float) -> str:
    """Why the database at ``uri`` cannot be connected to within ``seconds`` (tried every second), or "".

    MLflow itself retries a database it cannot reach for about 100 s and then ends in a traceback."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    dialect, _, driver = uri.split("://", 1)[0].lower().partition("+")
    # The drivers whose connect() takes connect_timeout (libpq's psycopg, PyMySQL, mysqlclient); with others
    # one attempt may outlast the budget, never more than one
    timed = (dialect in ("postgresql", "postgres") and driver in ("", "psycopg", "psycopg2")) or (
        dialect in ("mysql", "mariadb") and driver in ("", "pymysql", "mysqldb")
    )
    timeout = {"connect_timeout": max(1, round(seconds))} if timed else {}
    try:
        engine = sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args=timeout)
    except Exception as exc:  # an unknown dialect, a missing driver (No module named 'psycopg2')
        return first_line(exc)
    deadline = time.monotonic() + seconds
    try:
        while True:
            try:
                with engine.connect():
                    return ""
            except Exception as exc:  # refused, unknown host, authentication failed, no such database
                problem = first_line(getattr(exc, "orig", None) or exc)
            if time.monotonic() + 1.0 >= deadline:
                return problem
            time.sleep(1.0)
    finally:
        engine.dispose()


def first_line(exc: BaseException) -> str:
    """An error's first non-empty line, secrets hidden (drivers may echo the connection string)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return redact_text(lines[0] if lines else type(exc).__name__)


def auth_headers(uri: str) -> dict[str, str]:
    """The Authorization header MLflow sends to a tracking server: a token (MLFLOW_TRACKING_TOKEN), a
    username and password (MLFLOW_TRACKING_USERNAME / _PASSWORD), or the URL's own user-info."""
    if os.environ.get(TOKEN_ENV):
        return {"Authorization": f"Bearer {os.environ[TOKEN_ENV]}"}
    user, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
    if not (user and password):
        parts = urlsplit(uri)
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
    if not user:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def retry(call: Callable[[], T], also: tuple[str, ...] = (), where: str = "") -> T:
    """``call``, again while SQLite is locked or busy (or the error names one of ``also``); a server
    that does not answer raises ``TrackingUnreachable``, a store whose disk is full ``StoreFull``
    (``where``: the store, as shown)."""
    for attempt in range(_RETRIES):
        try:
            return call()
        except MlflowException as exc:
            if (down := unreachable(exc) or store_full(exc, where)) is not None:
                raise down from None
            text = str(exc).lower()
            if attempt == _RETRIES - 1 or not any(word in text for word in ("locked", "busy", *also)):
                raise
            time.sleep(0.2 * 2**attempt)
        except OSError as exc:  # artifacts written to a local folder
            if (full := store_full(exc, where)) is not None:
                raise full from None
            raise
    raise AssertionError("unreachable")
