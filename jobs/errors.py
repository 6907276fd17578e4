"""Errors of the job queue; the CLI and the dashboard turn them into messages (they are `LampError`s)."""

from core.errors import LampError


class JobError(LampError):
    """Something about a job request cannot be done."""


class JobNotFound(JobError):
    """No job with that id."""


class StudyNotFound(JobNotFound):
    """No study with that id."""
