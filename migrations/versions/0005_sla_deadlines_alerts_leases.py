"""SLA: ticket deadlines and alerts, activity/snooze/next-due columns, leases

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

import helpdesk.store.types
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = helpdesk.store.types.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table('ticket') as batch:
        batch.add_column(sa.Column('activity_at', UTC, nullable=True))
        batch.add_column(sa.Column('snoozed_until', UTC, nullable=True))
        batch.add_column(sa.Column('sla_policy', sa.String(), nullable=True))
        batch.add_column(sa.Column('next_due_at', UTC, nullable=True))
        batch.create_index('ix_ticket_next_due_at', ['next_due_at'], unique=False)
    op.execute("UPDATE ticket SET activity_at = updated_at")
    op.create_table(
        'ticket_deadline',
        sa.Column('ticket_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(), nullable=False),
        sa.Column('key', sa.String(), nullable=False),
        sa.Column('at', UTC, nullable=False),
        sa.ForeignKeyConstraint(['ticket_id'], ['ticket.id']),
        sa.PrimaryKeyConstraint('ticket_id', 'kind'),
    )
    op.create_table(
        'ticket_alert',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('ticket_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(), nullable=False),
        sa.Column('key', sa.String(), nullable=False),
        sa.Column('due_at', UTC, nullable=False),
        sa.Column('fired_at', UTC, nullable=False),
        sa.Column('fired_by', sa.String(), nullable=False),
        sa.ForeignKeyConstraint(['ticket_id'], ['ticket.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('ticket_id', 'kind', 'key', name='uq_ticket_alert'),
    )
    op.create_index('ix_ticket_alert_ticket_id', 'ticket_alert', ['ticket_id'], unique=False)
    op.create_table(
        'lease',
        sa.Column('name', sa.String(), nullable=False),
        sa.Column('holder', sa.String(), nullable=False),
        sa.Column('expires_at', UTC, nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade() -> None:
    op.drop_table('lease')
    op.drop_index('ix_ticket_alert_ticket_id', table_name='ticket_alert')
    op.drop_table('ticket_alert')
    op.drop_table('ticket_deadline')
    with op.batch_alter_table('ticket') as batch:
        batch.drop_index('ix_ticket_next_due_at')
        batch.drop_column('next_due_at')
        batch.drop_column('sla_policy')
        batch.drop_column('snoozed_until')
        batch.drop_column('activity_at')
