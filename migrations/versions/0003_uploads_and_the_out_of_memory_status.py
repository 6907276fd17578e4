"""uploads, and the OUT_OF_MEMORY status

Written by `alembic revision --autogenerate`, then reviewed. `uploads` records each data file a dashboard user
uploaded (kept under $LAMP_HOME/uploads/<digest>/<name>): the client names it only by its digest, and only its owner
may. jobs.status gains OUT_OF_MEMORY and job_attempts.outcome `out_of_memory`; both are plain string columns, so
the upgrade needs no schema change for them. The downgrade turns them back into what the earlier code knows
(FAILED / failed), so that an older `lamp` reads every row.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('uploads',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=200), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('used_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_uploads')),
    sa.UniqueConstraint('digest', 'owner', name=op.f('uq_uploads_digest_owner'))
    )
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_uploads_owner'), ['owner'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("UPDATE jobs SET status = 'FAILED' WHERE status = 'OUT_OF_MEMORY'")
    op.execute("UPDATE job_attempts SET outcome = 'failed' WHERE outcome = 'out_of_memory'")
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_uploads_owner'))

    op.drop_table('uploads')
