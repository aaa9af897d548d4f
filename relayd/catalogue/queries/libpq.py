"""A Reader over a PostgreSQL catalogue through libpq itself, for relayctl's fast path.

Importing psycopg takes 0.13 s on a small machine, more than half of what `relayctl status` may take
in all (docs/benchmarks.md), and SQLAlchemy more again. libpq (the library psycopg wraps: psycopg's
binary wheel ships it, or the system's libpq5) loads through ctypes in about 0.02 s and brings the
connection string, TLS, ``.pgpass`` and every authentication method with it.

Reading cell by cell through ctypes costs about a microsecond a cell, too slow for the 100,000 cells
of a large repo's status, so each query is wrapped to come back as one JSON document,
``SELECT json_agg(relayd_row.*) FROM (query) AS relayd_row``: the server builds it, and ``json.loads``
reads it in C.
The rows keep the query's order (an aggregate over a sorted subquery reads it in order; PostgREST
builds its answers the same way). Values come back as the SQLite reader gives them: numbers as int
or float, booleans as bool, timestamps as ISO text (``as_utc`` reads them); JSON columns come back
parsed (``from_json`` passes them through).
"""

from __future__ import annotations

import ctypes
import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from relayd.errors import CatalogueError

CONNECTION_OK = 0
PGRES_COMMAND_OK = 1
PGRES_TUPLES_OK = 2
CONNECT_TIMEOUT_S = "10"
# libpq options set on every catalogue connection unless the URL sets them: a link across a border
# that drops packets silently is found dead within about a minute (keepalives while idle, and a
# timeout on unacknowledged data), not after the kernel's default of two hours or fifteen minutes.
LINK_OPTIONS = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",
}
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_DRIVER = re.compile(r"^postgres(?:ql)?\+psycopg://")
_HINT = "check [catalogue] url in the config and that the PostgreSQL server is reachable from here"


class LibpqError(CatalogueError):
    """libpq could not connect or run a query; the message is the server's or libpq's own."""


def find_libpq() -> ctypes.CDLL | None:
    """Load libpq: the copy psycopg's binary wheel ships, else the system's (libpq5); None if neither."""
    spec = find_spec("psycopg_binary")  # finding a package does not import it
    if spec is not None and spec.origin is not None:
        libs = Path(spec.origin).parent.parent / "psycopg_binary.libs"
        for candidate in sorted(libs.glob("libpq-*.so*")):
            return ctypes.CDLL(str(candidate))
    try:
        return ctypes.CDLL("libpq.so.5")
    except OSError:
        return None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Give the few libpq functions used here their C signatures."""
    pointer, text, number = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "PQconnectdbParams": (pointer, [ctypes.POINTER(text), ctypes.POINTER(text), number]),
        "PQstatus": (number, [pointer]),
        "PQerrorMessage": (text, [pointer]),
        "PQfinish": (None, [pointer]),
        "PQexec": (pointer, [pointer, text]),
        "PQexecParams": (
            pointer,
            [pointer, text, number, pointer, ctypes.POINTER(text), pointer, pointer, number],
        ),
        "PQresultStatus": (number, [pointer]),
        "PQresultErrorMessage": (text, [pointer]),
        "PQntuples": (number, [pointer]),
        "PQgetvalue": (text, [pointer, number, number]),
        "PQgetisnull": (number, [pointer, number, number]),
        "PQclear": (None, [pointer]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


def _strings(values: list[str | None]) -> Any:
    return (ctypes.c_char_p * len(values))(*(None if v is None else v.encode() for v in values))


def _param(value: Any) -> str | None:
    """A parameter as PostgreSQL's text input reads it (its type is inferred where it is used)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs, in order and with repeated keys kept."""


def _plain(value: Any) -> Any:
    """A JSON value with its objects as dicts."""
    if type(value) is _Pairs:
        return {key: _plain(item) for key, item in value}
    if type(value) is list:
        return [_plain(item) for item in value]
    return value


_FIRST_ROW = json.JSONDecoder(object_pairs_hook=list)


def rows_of(document: str) -> list[tuple[Any, ...]]:
    """The rows of a ``json_agg`` of rows, each as a tuple of its column values in order.

    A row reads as a dict, fast, unless the query names two columns alike (two ``id`` columns): then
    the first row has more pairs than keys, and the rows are read again as pairs, which keep both.
    """
    listed = json.loads(document)
    if not listed:
        return []
    first, _ = _FIRST_ROW.raw_decode(document, document.index("{"))
    if len(first) == len(listed[0]):
        return [tuple(row.values()) for row in listed]
    paired = json.loads(document, object_pairs_hook=_Pairs)
    return [tuple(_plain(value) for _, value in row) for row in paired]


class LibpqReader:
    """A Reader over PostgreSQL through libpq alone (no psycopg or SQLAlchemy import)."""

    def __init__(self, url: str, lib: ctypes.CDLL) -> None:
        self._lib = _declare(lib)
        # Keywords in order: the URL (expanded, as libpq reads a URI) overrides the defaults before it.
        keywords = ["connect_timeout", "client_encoding", *LINK_OPTIONS, "dbname"]
        values = [CONNECT_TIMEOUT_S, "UTF8", *LINK_OPTIONS.values(), _DRIVER.sub("postgresql://", url)]
        self._connection = self._lib.PQconnectdbParams(
            _strings([*keywords, None]), _strings([*values, None]), 1
        )
        if self._lib.PQstatus(self._connection) != CONNECTION_OK:
            message = self._message(self._lib.PQerrorMessage(self._connection))
            self.close()
            raise LibpqError(f"cannot reach the catalogue: {message}; {_HINT}")

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        numbers: dict[str, int] = {}

        def number(match: re.Match[str]) -> str:
            return f"${numbers.setdefault(match.group(1), len(numbers) + 1)}"

        query = _NAMED.sub(number, sql)
        given = dict(params or {})
        values = [_param(given[name]) for name in numbers]
        wrapped = f"SELECT json_agg(relayd_row.*) FROM ({query}) AS relayd_row"  # noqa: S608 (our own SQL, values as params)
        document = self._run(wrapped, values)
        return [] if document is None else rows_of(document.decode())  # None: json_agg of no rows

    def _run(self, query: str, values: list[str | None]) -> bytes | None:
        """Run *query* with text parameters; return its one value (None for NULL)."""
        lib = self._lib
        result = lib.PQexecParams(
            self._connection, query.encode(), len(values), None, _strings(values), None, None, 0
        )
        try:
            if lib.PQresultStatus(result) != PGRES_TUPLES_OK:
                raise LibpqError(f"catalogue: {self._message(lib.PQresultErrorMessage(result))}")
            if lib.PQntuples(result) != 1 or lib.PQgetisnull(result, 0, 0):
                return None
            value: bytes = lib.PQgetvalue(result, 0, 0)
            return value
        finally:
            lib.PQclear(result)

    def _command(self, command: str) -> None:
        result = self._lib.PQexec(self._connection, command.encode())
        try:
            if self._lib.PQresultStatus(result) != PGRES_COMMAND_OK:
                raise LibpqError(f"catalogue: {self._message(self._lib.PQresultErrorMessage(result))}")
        finally:
            self._lib.PQclear(result)

    @staticmethod
    def _message(raw: bytes | None) -> str:
        return " ".join((raw or b"no message").decode(errors="replace").split())

    @contextmanager
    def consistent(self) -> Iterator[None]:
        """Run the reads in one repeatable-read transaction (one snapshot)."""
        self._command("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            yield
        finally:
            self._command("COMMIT")

    def has_table(self, name: str) -> bool:
        found = self.rows("SELECT to_regclass(:name) IS NOT NULL", {"name": name})
        return bool(found and found[0][0])

    def close(self) -> None:
        if self._connection:
            self._lib.PQfinish(self._connection)
            self._connection = None
