"""docs/sites.md's least-privilege roles, run as written on a throwaway PostgreSQL: the owner creates the
schema, a site's role relays (adds a repo, claims, records pieces, publishes its heartbeat) and cannot
change the schema."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from relayd.catalogue import migrate
from relayd.catalogue.store import FileSpec, RepoSpec, Store
from relayd_sandbox.postgres import ThrowawayPostgres

SITES_DOC = Path(__file__).resolve().parents[2] / "docs" / "sites.md"
ROLES = ("relayd_abroad", "relayd_vm", "relayd_site", "relayd_owner")


def sql_blocks() -> list[str]:
    """Return the doc's ```sql blocks, in order."""
    return re.findall(r"```sql\n(.*?)```", SITES_DOC.read_text(), re.S)


def statements(block: str) -> tuple[list[str], list[str]]:
    """Split a block at psql's `\\c relayd` into the statements run before it (on the server's own
    database) and after it (in the relayd database)."""
    before, _, after = block.partition("\\c relayd\n")
    if not _:
        before, after = "", before

    def split(text: str) -> list[str]:
        lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
        return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]

    return split(before), split(after)


@pytest.fixture
def roles(postgres_server: ThrowawayPostgres) -> Iterator[ThrowawayPostgres]:
    """Run the doc's statements; drop the database and the roles afterwards (roles are server-wide)."""
    first, second = sql_blocks()
    on_server, in_database = statements(first)
    with postgres_server.admin() as admin:
        for statement in on_server:
            admin.execute(statement)
    relayd = psycopg.connect(
        host=postgres_server.host,
        port=postgres_server.port,
        user="postgres",
        dbname="relayd",
        autocommit=True,
    )
    try:
        for statement in in_database:
            relayd.execute(statement)
        owner = Store(postgres_server.url("relayd", user="relayd_owner"))
        migrate.ensure_schema(owner.engine, auto_upgrade=False)
        owner.close()
        for statement in [*statements(second)[0], *statements(second)[1]]:
            relayd.execute(statement)
    finally:
        relayd.close()
    try:
        yield postgres_server
    finally:
        postgres_server.drop_database("relayd")
        with postgres_server.admin() as admin:
            for role in ROLES:
                admin.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_site_role_relays_but_cannot_change_the_schema(roles: ThrowawayPostgres) -> None:
    store = Store(roles.url("relayd", user="relayd_vm"))
    try:
        migrate.ensure_schema(store.engine, auto_upgrade=False)  # at head: nothing to create
        repo, _ = store.add_repo(RepoSpec(name="acme/model", every=3600, route=("local_copy",)))
        digest = hashlib.sha256(b"weights").hexdigest()
        store.record_snapshot(repo.id, "c" * 40, [FileSpec("w.bin", 7, True, digest)])
        transfer = store.claim("local_copy", "site-vm", lease=60)
        assert transfer is not None
        store.publish("daemon", {"state": "running"})
    finally:
        store.close()
    site = psycopg.connect(
        host=roles.host, port=roles.port, user="relayd_vm", dbname="relayd", autocommit=True
    )
    with site:
        for statement in (
            "CREATE TABLE intruder (id integer)",
            "DROP TABLE transfers",
            "CREATE DATABASE other",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                site.execute(statement)
