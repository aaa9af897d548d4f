"""What a hop's (or a drive backend's) harness tells the conformance suite: the config sections that
point the hop at real servers on 127.0.0.1, how to seed a catalogue whose transfers of the hop are
pending, how many payload bytes the server took in, what arrived at the destination, and how to make
the copy arrive damaged.

A harness lives in the test process, beside the servers (the sandbox's pytest fixtures). The hop
itself is built from the config alone, exactly as the daemon builds it (``relayd.services`` and the
hop's own config section), so the suite can run it in this process or in a child it kills with
SIGKILL. Only ``register_services`` (a class method) runs in both: it may replace a shared client the
way the daemon registers it, e.g. a drive with small parts so a small file still has several.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from relayd.config import Config
    from relayd.drive.base import Drive
    from relayd.services import Services
    from relayd_sandbox.conformance.bench import Bench

#: Gives a pytest fixture's value by name (``request.getfixturevalue``).
Fixture = Callable[[str], Any]

#: The repo every harness relays (its HF-style name; destinations derive from it).
REPO = "acme/model"


class HopHarness(abc.ABC):
    """Real servers for one hop, and what the suite needs to know about them.

    Class attributes: ``hop``, the registered hop name; ``piece_size``, the piece size the harness
    configures (files are sized from it); ``location_keys``, the handle keys that name the verified
    copy (two verifies of one copy must agree on them). A hop that uses the drive (``"drive"`` in
    its ``services``) runs once per drive backend, and its harness gets that backend's
    ``DriveHarness`` as *drive*.
    """

    hop: ClassVar[str]
    piece_size: ClassVar[int]
    location_keys: ClassVar[tuple[str, ...]]
    #: ``"module:Class"`` of a hop class to run instead of the one registered as ``hop`` (a hop not
    #: registered yet, or a variant); it must be importable in a child process too.
    hop_class: ClassVar[str | None] = None

    def __init__(self, bench: Bench, fixture: Fixture, drive: DriveHarness | None = None) -> None:
        self.bench = bench
        self.fixture = fixture
        self.drive_harness = drive

    def files(self) -> dict[str, bytes]:
        """Return the files to relay, path → content: by default one file of three and a half pieces."""
        return {"weights-00001.bin": self.bench.content(3 * self.piece_size + self.piece_size // 2)}

    @abc.abstractmethod
    def sections(self) -> dict[str, dict[str, Any]]:
        """Return the config sections (TOML tables as dicts) the hop and its services read."""

    @classmethod
    def register_services(cls, config: Config, services: Services) -> None:
        """Replace shared clients for this harness (runs in every process that builds the hop)."""
        return None

    @abc.abstractmethod
    def seed(self, files: Mapping[str, bytes]) -> None:
        """Record a snapshot of *files* whose transfers of ``hop`` are pending: put them where the hop
        reads them, and complete the hops before it (``Bench.add_snapshot``, ``Bench.complete_earlier``)."""

    @abc.abstractmethod
    def received(self) -> int | None:
        """Return the payload bytes the real server has taken in (or served) for this hop so far, as
        the server counts them; None when there is no server (a local hop)."""

    @abc.abstractmethod
    def fetch(self, path: str) -> bytes | None:
        """Return the bytes of the file *path* at the hop's destination, None when no copy is there."""

    @abc.abstractmethod
    def damage(self) -> None:
        """Make every copy from now on arrive damaged at the destination (same size, other bytes), the
        way the service's fake can: a body altered in transit, a stored copy gone bad."""

    @abc.abstractmethod
    def repair(self) -> None:
        """Stop damaging copies (those already damaged stay so)."""

    def landed(self, transfer_id: int) -> None:
        """Called, in this process, when every piece of a transfer is recorded durable and before it is
        verified (a local hop damages its copy here)."""
        return None

    def close(self) -> None:
        """Release what the harness holds (servers come and go with their fixtures)."""
        return None


class DriveHarness(abc.ABC):
    """A drive backend over its fake: the ``[drive]`` section, a way to put a file there as
    pan_upload would, to read one back, and the fake's byte counters and damage knobs."""

    backend: ClassVar[str]
    #: The multipart part size of the drive ``make`` builds (files for drive hops are sized from it).
    part_size: ClassVar[int]

    def __init__(self, root: Path, fixture: Fixture) -> None:
        self.root = root
        self.fixture = fixture

    @abc.abstractmethod
    def section(self) -> dict[str, Any]:
        """Return the ``[drive]`` table that points this backend at its fake."""

    def prepare(self, config: Config) -> None:  # noqa: B027 - a hook most backends need not fill
        """Get the backend ready for *config* once it is parsed (a login a person would make first)."""

    @classmethod
    def make(cls, config: Config) -> Drive:
        """Return the drive the daemon would build (override to shrink its parts for small files)."""
        from relayd.drive import make_drive

        return make_drive(config.drive, config.daemon.state_dir)

    @classmethod
    def register_services(cls, config: Config, services: Services) -> None:
        """Register ``make`` as the shared ``"drive"`` (runs in every process that builds the hop)."""
        services.register("drive", lambda: cls.make(config))

    @abc.abstractmethod
    def put(self, path: str, data: bytes) -> str:
        """Put *data* on the drive at the absolute *path* and return its file id."""

    @abc.abstractmethod
    def read(self, path: str) -> bytes | None:
        """Return the bytes of the visible file at the absolute *path*, None when there is none."""

    @abc.abstractmethod
    def uploaded(self) -> int:
        """Return the payload bytes the drive received in uploads so far."""

    @abc.abstractmethod
    def downloaded(self) -> int:
        """Return the payload bytes the drive served in downloads so far."""

    @abc.abstractmethod
    def damage_uploads(self) -> None:
        """Make every uploaded part arrive damaged from now on."""

    @abc.abstractmethod
    def damage_file(self, file_id: str) -> None:
        """Make the stored bytes of *file_id* bad (its recorded hash unchanged)."""

    @abc.abstractmethod
    def repair(self) -> None:
        """Stop damaging uploads, and make damaged files whole again."""
