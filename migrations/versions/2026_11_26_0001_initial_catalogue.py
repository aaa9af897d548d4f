"""initial catalogue

Revision ID: 0001
Revises: 
Create Date: 2026-11-26 21:35:55.076018
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import relayd.catalogue.schema


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('blobs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('git_blob_id', sa.String(length=40), nullable=True),
    sa.Column('sha1', sa.String(length=40), nullable=True),
    sa.Column('size', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('staged_path', sa.Text(), nullable=True),
    sa.Column('staged_at', relayd.catalogue.schema.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_blobs')),
    sa.UniqueConstraint('sha256', name=op.f('uq_blobs_sha256'))
    )
    with op.batch_alter_table('blobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_blobs_git_blob_id'), ['git_blob_id'], unique=False)

    op.create_table('repos',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('repo_type', sa.String(length=16), nullable=False),
    sa.Column('revision', sa.String(length=255), nullable=False),
    sa.Column('include', sa.JSON(), nullable=False),
    sa.Column('exclude', sa.JSON(), nullable=False),
    sa.Column('every', sa.Float(), nullable=False),
    sa.Column('route', sa.JSON(), nullable=False),
    sa.Column('destinations', sa.JSON(), nullable=False),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('paused', sa.Boolean(), nullable=False),
    sa.Column('head_commit', sa.String(length=64), nullable=True),
    sa.Column('poll_state', sa.String(length=16), nullable=False),
    sa.Column('poll_error', sa.Text(), nullable=True),
    sa.Column('poll_hint', sa.Text(), nullable=True),
    sa.Column('next_poll_at', relayd.catalogue.schema.UTCDateTime(), nullable=True),
    sa.Column('created_at', relayd.catalogue.schema.UTCDateTime(), nullable=False),
    sa.Column('updated_at', relayd.catalogue.schema.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_repos')),
    sa.UniqueConstraint('name', name=op.f('uq_repos_name'))
    )
    op.create_table('service_state',
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('value', sa.JSON(), nullable=False),
    sa.Column('updated_at', relayd.catalogue.schema.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_service_state'))
    )
    op.create_table('files',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('repo_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('blob_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('size', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('lfs', sa.Boolean(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('git_blob_id', sa.String(length=40), nullable=True),
    sa.Column('sha1', sa.String(length=40), nullable=True),
    sa.ForeignKeyConstraint(['blob_id'], ['blobs.id'], name=op.f('fk_files_blob_id_blobs')),
    sa.ForeignKeyConstraint(['repo_id'], ['repos.id'], name=op.f('fk_files_repo_id_repos'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_files')),
    sa.UniqueConstraint('repo_id', 'path', 'blob_id', name=op.f('uq_files_repo_id_path_blob_id'))
    )
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_files_blob_id'), ['blob_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_files_repo_id'), ['repo_id'], unique=False)

    op.create_table('snapshots',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('repo_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('commit', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('file_count', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('total_bytes', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('seen_at', relayd.catalogue.schema.UTCDateTime(), nullable=False),
    sa.Column('done_at', relayd.catalogue.schema.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['repo_id'], ['repos.id'], name=op.f('fk_snapshots_repo_id_repos'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_snapshots')),
    sa.UniqueConstraint('repo_id', 'commit', name=op.f('uq_snapshots_repo_id_commit'))
    )
    with op.batch_alter_table('snapshots', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_snapshots_repo_id'), ['repo_id'], unique=False)

    op.create_table('snapshot_files',
    sa.Column('snapshot_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('file_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.ForeignKeyConstraint(['file_id'], ['files.id'], name=op.f('fk_snapshot_files_file_id_files'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['snapshot_id'], ['snapshots.id'], name=op.f('fk_snapshot_files_snapshot_id_snapshots'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('snapshot_id', 'file_id', name=op.f('pk_snapshot_files'))
    )
    with op.batch_alter_table('snapshot_files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_snapshot_files_file_id'), ['file_id'], unique=False)

    op.create_table('transfers',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('repo_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('file_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('snapshot_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('hop', sa.String(length=64), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('bytes_done', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('bytes_total', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('bytes_moved', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('rate', sa.Float(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', relayd.catalogue.schema.UTCDateTime(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('error_class', sa.String(length=32), nullable=True),
    sa.Column('hint', sa.Text(), nullable=True),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_expires_at', relayd.catalogue.schema.UTCDateTime(), nullable=True),
    sa.Column('handles', sa.JSON(), nullable=False),
    sa.Column('created_at', relayd.catalogue.schema.UTCDateTime(), nullable=False),
    sa.Column('started_at', relayd.catalogue.schema.UTCDateTime(), nullable=True),
    sa.Column('finished_at', relayd.catalogue.schema.UTCDateTime(), nullable=True),
    sa.Column('updated_at', relayd.catalogue.schema.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['file_id'], ['files.id'], name=op.f('fk_transfers_file_id_files'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['repo_id'], ['repos.id'], name=op.f('fk_transfers_repo_id_repos'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['snapshot_id'], ['snapshots.id'], name=op.f('fk_transfers_snapshot_id_snapshots'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_transfers')),
    sa.UniqueConstraint('file_id', 'hop', name=op.f('uq_transfers_file_id_hop')),
    sa.UniqueConstraint('snapshot_id', 'hop', name=op.f('uq_transfers_snapshot_id_hop'))
    )
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.create_index('ix_transfers_claim', ['hop', 'state', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_transfers_summary', ['repo_id', 'hop', 'state', 'bytes_total', 'bytes_done'], unique=False)

    op.create_table('pieces',
    sa.Column('transfer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('offset', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('length', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('done', sa.Boolean(), nullable=False),
    sa.Column('sends', sa.Integer(), nullable=False),
    sa.Column('done_at', relayd.catalogue.schema.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['transfer_id'], ['transfers.id'], name=op.f('fk_pieces_transfer_id_transfers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('transfer_id', 'idx', name=op.f('pk_pieces'))
    )


def downgrade() -> None:
    op.drop_table('pieces')
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.drop_index('ix_transfers_summary')
        batch_op.drop_index('ix_transfers_claim')

    op.drop_table('transfers')
    with op.batch_alter_table('snapshot_files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_snapshot_files_file_id'))

    op.drop_table('snapshot_files')
    with op.batch_alter_table('snapshots', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_snapshots_repo_id'))

    op.drop_table('snapshots')
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_files_repo_id'))
        batch_op.drop_index(batch_op.f('ix_files_blob_id'))

    op.drop_table('files')
    op.drop_table('service_state')
    op.drop_table('repos')
    with op.batch_alter_table('blobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_blobs_git_blob_id'))

    op.drop_table('blobs')
