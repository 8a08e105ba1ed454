"""Graph/EWS sync token per mailbox folder; the Message-ID a sending service assigned

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('mailbox_state') as batch:
        batch.add_column(sa.Column('sync_token', sa.Text(), nullable=True))
    with op.batch_alter_table('outbox') as batch:
        batch.add_column(sa.Column('sent_message_id', sa.String(), nullable=True))
        batch.create_index('ix_outbox_sent_message_id', ['sent_message_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbox') as batch:
        batch.drop_index('ix_outbox_sent_message_id')
        batch.drop_column('sent_message_id')
    with op.batch_alter_table('mailbox_state') as batch:
        batch.drop_column('sync_token')
