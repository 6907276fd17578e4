"""lamp_studies and lamp_study_trials: sweeps whose trials are jobs.

Written by `alembic revision --autogenerate`, then reviewed. Optuna keeps its own tables (`studies`, `trials`, its
own `alembic_version`) in a separate database (jobs.studies.storage_url()); these two only link its trials to our
jobs, hence the `lamp_` prefix. A trial row outlives its job (SET NULL) so that a study's history stays readable.
The jobs.status column gains the value PRUNED, which needs no schema change (a plain string column).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('lamp_studies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('optuna_name', sa.String(length=200), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('sampler', sa.String(length=16), nullable=False),
    sa.Column('objectives', sa.JSON(), nullable=False),
    sa.Column('base_spec', sa.JSON(), nullable=False),
    sa.Column('space', sa.JSON(), nullable=False),
    sa.Column('n_trials', sa.Integer(), nullable=False),
    sa.Column('parallel', sa.Integer(), nullable=False),
    sa.Column('pruner', sa.String(length=16), nullable=False),
    sa.Column('tolerance', sa.Double(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('locked_until', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lamp_studies')),
    sa.UniqueConstraint('optuna_name', name=op.f('uq_lamp_studies_optuna_name'))
    )
    with op.batch_alter_table('lamp_studies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_lamp_studies_status'), ['status'], unique=False)

    op.create_table('lamp_study_trials',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('twin_id', sa.Integer(), nullable=True),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('setting', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_lamp_study_trials_job_id_jobs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['study_id'], ['lamp_studies.id'], name=op.f('fk_lamp_study_trials_study_id_lamp_studies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lamp_study_trials')),
    sa.UniqueConstraint('job_id', name=op.f('uq_lamp_study_trials_job_id')),
    sa.UniqueConstraint('study_id', 'number', name=op.f('uq_lamp_study_trials_study_id_number'))
    )
    with op.batch_alter_table('lamp_study_trials', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_lamp_study_trials_study_id'), ['study_id'], unique=False)



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('lamp_study_trials', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_lamp_study_trials_study_id'))

    op.drop_table('lamp_study_trials')
    with op.batch_alter_table('lamp_studies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_lamp_studies_status'))

    op.drop_table('lamp_studies')
