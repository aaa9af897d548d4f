"""The names of the catalogue's states, without SQLAlchemy.

``relayd.catalogue.schema`` holds the same constants next to its models; the status path (queries) and
the pure rules (rules) take them from here because importing the schema pulls in SQLAlchemy, which
`relayctl status` avoids to answer in a fraction of a second.
"""

PENDING = "pending"
RUNNING = "running"
WAITING = "waiting"
BLOCKED = "blocked"
DONE = "done"
OPEN_STATES = (PENDING, RUNNING, WAITING, BLOCKED)
POLL_BLOCKED = "blocked"
POLL_WAITING = "waiting"
# Not a catalogue state: how status shows a transfer left `running` by a daemon that is not running.
INTERRUPTED = "interrupted"
# The states a transfer may be stuck in: still retrying, not done, not blocked.
RETRYING_STATES = (PENDING, RUNNING, WAITING)

# What "blocked first" means when files or hops are sorted: the state that needs a person leads.
STATE_ORDER = {BLOCKED: 0, WAITING: 1, RUNNING: 2, INTERRUPTED: 2, PENDING: 3, DONE: 4}
