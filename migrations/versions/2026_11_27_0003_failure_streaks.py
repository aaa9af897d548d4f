"""failure streaks: since when a transfer or a poll keeps failing, and when that was surfaced as stuck

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import relayd.catalogue.schema


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('repos', schema=None) as batch_op:
        batch_op.add_column(sa.Column('poll_error_class', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('poll_attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('poll_failing_since', relayd.catalogue.schema.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('poll_surfaced_at', relayd.catalogue.schema.UTCDateTime(), nullable=True))

    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failing_since', relayd.catalogue.schema.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('surfaced_at', relayd.catalogue.schema.UTCDateTime(), nullable=True))
        batch_op.create_index('ix_transfers_failing', ['failing_since'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.drop_index('ix_transfers_failing')
        batch_op.drop_column('surfaced_at')
        batch_op.drop_column('failing_since')

    with op.batch_alter_table('repos', schema=None) as batch_op:
        batch_op.drop_column('poll_surfaced_at')
        batch_op.drop_column('poll_failing_since')
        batch_op.drop_column('poll_attempts')
        batch_op.drop_column('poll_error_class')
