"""Alembic environment for relayd's catalogue.

The connection comes from ``config.attributes["connection"]`` so the daemon, relayctl and the tests
migrate the very engine they use; SQLite runs in batch mode so ALTERs work.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from relayd.catalogue.schema import Base

target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    connection = context.config.attributes.get("connection")
    if connection is None:
        from relayd.catalogue.db import make_engine

        url = context.config.get_main_option("sqlalchemy.url")
        if not url:
            raise SystemExit("set sqlalchemy.url, or run migrations through `relayctl db upgrade`")
        with make_engine(url).connect() as own_connection:
            run_migrations(own_connection)
            own_connection.commit()
    else:
        run_migrations(connection)
