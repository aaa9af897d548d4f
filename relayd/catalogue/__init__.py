"""The catalogue: every model file's hashes, size and per-hop status, in SQLite or any SQL database.

``store`` is the only module that writes it; ``migrate`` creates and upgrades its schema.
"""
