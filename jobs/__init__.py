"""Tuning jobs: the results store (SQLAlchemy + Alembic), the huey queue, workers and recovery of dead workers.

`core/` knows nothing of this package; a job is a `core.spec.RunSpec` kept as JSON plus the rows that record what
happened to it. See docs/jobs.md.
"""
