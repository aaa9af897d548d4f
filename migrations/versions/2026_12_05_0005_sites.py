"""sites: a heartbeat per daemon (workers), where each staged copy is (blobs and transfers staged_on),
and an index in the claim's order (the largest runnable first)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 23:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import relayd.catalogue.schema


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOT_FINISHED = "state <> 'done'"


def upgrade() -> None:
    op.create_table(
        'workers',
        sa.Column('id', sa.String(length=128), nullable=False),
        sa.Column('site', sa.String(length=64), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('hops', sa.JSON(), nullable=True),
        sa.Column('version', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('started_at', relayd.catalogue.schema.UTCDateTime(), nullable=False),
        sa.Column('last_seen', relayd.catalogue.schema.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_workers')),
    )
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_workers_last_seen'), ['last_seen'], unique=False)

    with op.batch_alter_table('blobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('staged_on', sa.String(length=255), nullable=True))

    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('staged_on', sa.String(length=255), nullable=True))
    op.create_index(
        'ix_transfers_claim_order',
        'transfers',
        ['hop', 'bytes_total'],
        unique=False,
        postgresql_where=sa.text(NOT_FINISHED),
        sqlite_where=sa.text(NOT_FINISHED),
    )


def downgrade() -> None:
    op.drop_index('ix_transfers_claim_order', table_name='transfers')
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.drop_column('staged_on')

    with op.batch_alter_table('blobs', schema=None) as batch_op:
        batch_op.drop_column('staged_on')

    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_workers_last_seen'))
    op.drop_table('workers')
