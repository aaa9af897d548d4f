"""The shared state of one download (one ``DownloadHop.move``): which blocks of the missing pieces are
handed to which connection, in file order; what is written (the contiguous prefix that can be hashed);
the signed location in use; the errors. Bookkeeping only: the connections are
``relayd.hops.download_fetch``'s.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from relayd.hops.base import Job, PieceSpec

MiB = 1024 * 1024
BLOCK = 4 * MiB  # the smallest request: pieces are fetched in spans of blocks, in file order
HASH_WINDOW = 4 * MiB  # per file: how much of the written prefix is hashed at once


@dataclass
class Location:
    """One signed location of the file; ``generation`` tells a refresh from a stale copy, ``good`` that
    it served bytes, ``used`` that a request was sent with it."""

    url: str
    generation: int
    xet: bool
    good: bool = False
    used: bool = False


@dataclass
class Lease:
    """The location one worker holds once signed URLs serve one range each (a fresh one per request)."""

    location: Location | None = None


@dataclass
class Span:
    """One ranged request: consecutive blocks ``[first, last)`` of one piece, fetched by one worker;
    ``current`` is the block being written."""

    piece: int
    first: int
    last: int
    current: int


class Run:
    """The shared state of one move(): what to fetch, what is written, the location, the errors.

    The missing pieces are cut into blocks and handed out in file order, a span of blocks per request:
    one block per connection first, then doubling up to whole pieces while much is left, and smaller
    spans again towards the end. Requests then complete roughly in
    file order, so the contiguous written prefix (what can be hashed) follows the download closely and
    little is left to hash after the last byte; the last spans are small, so a slow connection does not
    hold the end back. At most ``connections`` pieces are started and not yet durable at a time, so a
    crash loses at most one piece per connection.
    """

    def __init__(
        self, job: Job, fd: int, path: Path, size: int, pieces: list[PieceSpec], connections: int
    ) -> None:
        self.job = job
        self.fd = fd
        self.path = path
        self.size = size
        self.pieces = pieces
        self.connections = max(1, connections)
        self.location = Location("", 0, False)
        # One lock, two conditions: workers wait in take() for a piece to be recorded, the hasher for
        # the written prefix to grow by a window; each is woken only for its own news.
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.hashable = threading.Condition(self.lock)
        self.hash_wanted = 0  # the hasher waits until the written prefix reaches this offset
        self.record_lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.refresh_lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.fresh_refusals = 0
        self.one_range = False  # one fresh location per request, each request the rest of a piece
        self.workers_done = False
        longest = max((p.length for p in pieces), default=0)
        self.block = max(1, min(BLOCK, longest))
        self.block_start: list[int] = []
        self.block_len: list[int] = []
        self.block_piece: list[int] = []
        self.written: list[int] = []
        self.missing_blocks: list[int] = []
        self.state: list[str] = []  # per piece: "todo", "open", "closing", "done"
        self.undispatched = 0
        for position, piece in enumerate(pieces):
            count = 0
            for offset in range(piece.offset, piece.offset + piece.length, self.block):
                length = min(self.block, piece.offset + piece.length - offset)
                self.block_start.append(offset)
                self.block_len.append(length)
                self.block_piece.append(position)
                self.written.append(length if piece.done else 0)
                count += 1
            self.missing_blocks.append(0 if piece.done else count)
            self.state.append("done" if piece.done else "todo")
            if not piece.done:
                self.undispatched += piece.length
        self.cursor = 0
        self.head = 0
        self.open_pieces = 0
        self.spans = 0

    @property
    def missing(self) -> int:
        return sum(1 for state in self.state if state != "done")

    def frontier(self) -> int:
        """Return the end of the contiguous written prefix (call under ``cond``)."""
        count = len(self.block_len)
        while self.head < count and self.written[self.head] >= self.block_len[self.head]:
            self.head += 1
        if self.head >= count:
            return self.size
        return self.block_start[self.head] + self.written[self.head]

    def take(self) -> tuple[Span, bool] | None:
        """Return the next span to fetch and whether it starts its piece, or None when all is handed
        out (or the run stops). Wait while ``connections`` pieces are open."""
        with self.cond:
            while not self.stop.is_set():
                count = len(self.block_len)
                while self.cursor < count and self.state[self.block_piece[self.cursor]] == "done":
                    self.cursor += 1
                if self.cursor >= count:
                    return None
                position = self.block_piece[self.cursor]
                starts = self.state[position] == "todo"
                if starts and self.open_pieces >= self.connections:
                    self.cond.wait(0.5)
                    continue
                piece = self.pieces[position]
                piece_end = piece.offset + piece.length
                # Spans grow from one block (so there is something to hash at once) to half of what
                # each connection has left, and shrink again towards the end.
                share = self.undispatched // (2 * self.connections)
                ramp = 2 ** min(16, self.spans // self.connections)
                blocks = max(1, min(ramp, -(-share // self.block)))
                if self.one_range:
                    blocks = count  # every location serves one request: make it the rest of the piece
                last = self.cursor
                while last < count and self.block_piece[last] == position and last - self.cursor < blocks:
                    last += 1
                span = Span(position, self.cursor, last, self.cursor)
                self.spans += 1
                self.undispatched -= (
                    min(self.block_start[last - 1] + self.block_len[last - 1], piece_end)
                    - (self.block_start[self.cursor])
                )
                self.cursor = last
                if starts:
                    self.state[position] = "open"
                    self.open_pieces += 1
                return span, starts
            return None

    def position(self, span: Span) -> int:
        """Return the file offset the span resumes at (call under ``cond``)."""
        return self.block_start[span.current] + self.written[span.current]

    def end(self, span: Span) -> int:
        return self.block_start[span.last - 1] + self.block_len[span.last - 1]

    def advance(self, span: Span, offset: int, length: int) -> None:
        """Record *length* bytes written at *offset* by *span* (they continue its written part)."""
        with self.cond:
            moved = span.current == self.head
            while length > 0:
                block = span.current
                take = min(length, self.block_len[block] - self.written[block])
                self.written[block] += take
                length -= take
                if self.written[block] == self.block_len[block]:
                    self.missing_blocks[span.piece] -= 1
                    span.current += 1
                    moved = True
            if moved and self.frontier() >= self.hash_wanted:
                self.hashable.notify_all()

    def closing(self, span: Span) -> bool:
        """Return True if the span's piece is now wholly written and this caller must record it."""
        with self.cond:
            if self.missing_blocks[span.piece] == 0 and self.state[span.piece] == "open":
                self.state[span.piece] = "closing"
                return True
            return False

    def recorded(self, span: Span) -> None:
        with self.cond:
            self.state[span.piece] = "done"
            self.open_pieces -= 1
            self.cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(exc)
            self.stop.set()
            self.wake_all()

    def wake_all(self) -> None:
        """Wake every waiting worker and the hasher (call under ``lock``)."""
        self.cond.notify_all()
        self.hashable.notify_all()
