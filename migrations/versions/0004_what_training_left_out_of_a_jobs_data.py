"""jobs.data_report: what training left out of or added to a job's data

A user's file with a stray empty cell is no longer refused: such rows are skipped, and the training process records
what it left out (how many rows of which file, the first row numbers; labels only the evaluation file has, added on
request) when an attempt starts, for the job's details. A nullable JSON column; the downgrade drops it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('data_report', sa.JSON(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('data_report')
