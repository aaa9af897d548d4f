"""Read-only queries behind `relayctl status`, `whereis`, `doctor` and the web page: aggregates, not rows
loaded one by one. Nothing here writes.

Each module answers one question: ``reader`` (how the catalogue is reached without SQLAlchemy on the
status path, and the values it hands back), ``status`` (each repo's summary), ``detail`` (one repo's
files by hop), ``failures`` (blocked and stuck work), ``daemon`` (whether a daemon serves the
catalogue), ``locations`` (where each file has verified copies, for whereis) and ``throughput``
(measured rates, bytes avoided). The names they had as one module are re-exported here.

Only ``:name`` placeholders (for IN lists) and fixed fragments are ever formatted into the SQL text,
never values, hence the ``noqa: S608`` markers.
"""

from relayd.catalogue.queries.daemon import (
    DAEMON_DEAD,
    DAEMON_NONE,
    DAEMON_RUNNING,
    DAEMON_STOPPED,
    STALE_HEARTBEAT,
    START_HINT,
    DaemonStatus,
    ServiceFact,
    daemon_of,
    daemon_status,
    instance_lock_path,
    lock_held,
    service_facts,
)
from relayd.catalogue.queries.detail import (
    FileHop,
    FileStatus,
    RepoDetail,
    repo_detail,
)
from relayd.catalogue.queries.failures import (
    BlockedItem,
    StuckItem,
)
from relayd.catalogue.queries.locations import (
    FileLocations,
    SnapshotTransfer,
    TransferRecord,
    WhereIs,
    whereis,
)
from relayd.catalogue.queries.reader import (
    BUSY_TIMEOUT_S,
    EngineReader,
    Reader,
    SqliteReader,
    open_reader,
    schema_at_head,
    schema_revision,
    sqlite_file,
)
from relayd.catalogue.queries.status import (
    FinishInfo,
    HopSummary,
    RepoSummary,
    RepoTarget,
    SnapshotInfo,
    Summary,
    repo_targets,
    summary,
)
from relayd.catalogue.queries.throughput import (
    Avoided,
    HopRate,
    RepoAvoided,
    bytes_avoided,
    measured_rates,
    repo_avoided,
)
from relayd.catalogue.rules import (
    DEFAULT_STUCK_HINT,
    DRIVE_COPY_REUSED,
    RAPID_UPLOAD,
    SERVER_HAD_IT,
    SKIP_MARKERS,
    STAGED_ALREADY,
    STUCK_HINTS,
    stuck_hint,
)
from relayd.catalogue.states import (
    BLOCKED,
    DONE,
    INTERRUPTED,
    OPEN_STATES,
    PENDING,
    POLL_BLOCKED,
    POLL_WAITING,
    RETRYING_STATES,
    RUNNING,
    STATE_ORDER,
    WAITING,
)

__all__ = [
    "BLOCKED",
    "BUSY_TIMEOUT_S",
    "DAEMON_DEAD",
    "DAEMON_NONE",
    "DAEMON_RUNNING",
    "DAEMON_STOPPED",
    "DEFAULT_STUCK_HINT",
    "DONE",
    "DRIVE_COPY_REUSED",
    "INTERRUPTED",
    "OPEN_STATES",
    "PENDING",
    "POLL_BLOCKED",
    "POLL_WAITING",
    "RAPID_UPLOAD",
    "RETRYING_STATES",
    "RUNNING",
    "SERVER_HAD_IT",
    "SKIP_MARKERS",
    "STAGED_ALREADY",
    "STALE_HEARTBEAT",
    "START_HINT",
    "STATE_ORDER",
    "STUCK_HINTS",
    "WAITING",
    "Avoided",
    "BlockedItem",
    "DaemonStatus",
    "EngineReader",
    "FileHop",
    "FileLocations",
    "FileStatus",
    "FinishInfo",
    "HopRate",
    "HopSummary",
    "Reader",
    "RepoAvoided",
    "RepoDetail",
    "RepoSummary",
    "RepoTarget",
    "ServiceFact",
    "SnapshotInfo",
    "SnapshotTransfer",
    "SqliteReader",
    "StuckItem",
    "Summary",
    "TransferRecord",
    "WhereIs",
    "bytes_avoided",
    "daemon_of",
    "daemon_status",
    "instance_lock_path",
    "lock_held",
    "measured_rates",
    "open_reader",
    "repo_avoided",
    "repo_detail",
    "repo_targets",
    "schema_at_head",
    "schema_revision",
    "service_facts",
    "sqlite_file",
    "stuck_hint",
    "summary",
    "whereis",
]
