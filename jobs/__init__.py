"""Tuning jobs: the results store (SQLAlchemy + Alembic), the huey queue, workers and recovery of dead workers.

`core/` knows nothing of this package; a job is a `core.spec.RunSpec` kept as JSON plus the rows that record what
happened to it. See docs/jobs.md.
"""

DEFAULT_MAX_ATTEMPTS = 3
"""Attempts a job gets (crashes, dead workers) before it is FAILED, unless it is submitted with another number."""
