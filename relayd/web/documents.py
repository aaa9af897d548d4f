"""The status documents for every web client, built once and reused while the catalogue is unchanged.

A page left open asks every few seconds; several people may look at once. Each document is built by
the same code as `relayctl status --json` on one reader thread (a SQLite connection belongs to the
thread that opened it), then kept: a request within ``min_age`` of the last build gets the same bytes,
and so does one while the catalogue has not changed since (SQLite's ``data_version``), up to
``max_age``. An idle daemon writes only its heartbeat, so a page open on it costs about one build per
heartbeat.
"""

from __future__ import annotations

import gzip
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from relayd.catalogue.queries import Reader, SqliteReader, open_reader
from relayd.logs import SCRUBBER

#: How many documents are kept (the summary, and the repos people opened lately).
KEPT = 32
GZIP_FROM = 8192


@dataclass
class Document:
    """One built document: its JSON (scrubbed of secrets), a tag that changes with every build, and
    its gzip form once a client asked for it."""

    body: bytes
    etag: str
    built_at: float
    version: int | None
    _gzipped: bytes | None = field(default=None, repr=False)

    def gzipped(self) -> bytes | None:
        """Return the body gzipped, or None when it is too small to bother."""
        if len(self.body) < GZIP_FROM:
            return None
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body, compresslevel=1, mtime=0)
        return self._gzipped


def encode(data: Any) -> bytes:
    """Return *data* as compact JSON, every secret relayd knows and every URL's query hidden."""
    return SCRUBBER.scrub(json.dumps(data, separators=(",", ":"), ensure_ascii=False)).encode()


class Documents:
    """Builds and keeps documents read from the catalogue at *url*."""

    def __init__(
        self,
        url: str,
        *,
        min_age: float = 1.0,
        max_age: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.min_age = min_age
        self.max_age = max_age
        self._clock = clock
        self._reader: Reader | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relayd-web-reader")
        self._kept: OrderedDict[tuple[Any, ...], Document] = OrderedDict()
        self._lock = threading.Lock()
        self._builds = 0
        # Tags differ from those of an earlier process, whose numbers a page left open may still hold.
        self._epoch = secrets.token_hex(4)

    def run(self, read: Callable[[Reader], Any]) -> Any:
        """Return ``read(reader)``, run on the reader thread (not kept)."""
        return self._thread.submit(self._with_reader, read).result()

    def get(self, key: tuple[Any, ...], build: Callable[[Reader], Any]) -> Document:
        """Return the document *key*: kept, or made now as ``encode(build(reader))``. What *build*
        raises is raised here, and nothing is kept."""
        return self._thread.submit(self._get, key, build).result()

    def forget(self) -> None:
        """Drop every kept document (after a write through the API, so the next read shows it)."""
        with self._lock:
            self._kept.clear()

    def close(self) -> None:
        self._thread.submit(self._close).result()
        self._thread.shutdown()

    # -- on the reader thread ------------------------------------------------------------------------

    def _open(self) -> Reader:
        if self._reader is None:
            self._reader = open_reader(self.url)
        return self._reader

    def _with_reader(self, read: Callable[[Reader], Any]) -> Any:
        return read(self._open())

    def _version(self) -> int | None:
        """Return SQLite's data_version, which changes whenever another connection commits (None for
        other databases: their documents are rebuilt once they are min_age old)."""
        reader = self._open()
        if not isinstance(reader, SqliteReader):
            return None
        return int(reader.rows("PRAGMA data_version")[0][0])

    def _get(self, key: tuple[Any, ...], build: Callable[[Reader], Any]) -> Document:
        now = self._clock()
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None and now - kept.built_at < self.min_age:
            return kept
        version = self._version()  # before the build: a commit during it makes the next request build
        fresh = kept is not None and now - kept.built_at < self.max_age
        if fresh and kept is not None and version is not None and version == kept.version:
            return kept
        data = build(self._open())
        self._builds += 1
        document = Document(encode(data), f'W/"{self._epoch}-{self._builds}"', now, version)
        with self._lock:
            self._kept[key] = document
            self._kept.move_to_end(key)
            while len(self._kept) > KEPT:
                self._kept.popitem(last=False)
        return document

    def _close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
