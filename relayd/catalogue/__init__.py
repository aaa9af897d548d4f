"""The catalogue: every model file's hashes, size and per-hop status, in SQLite or any SQL database.

The ``store`` package is the only writer of it (its pure decisions are in ``rules``; ``queries`` only
reads); ``migrate`` creates and upgrades its schema.
"""
