"""What a run reads, checked once per submission.

`core.spec.validate_spec` checks the settings alone and is cheap enough to run wherever a spec is built. This is the
other half: the data files are there, a warm start's source is a finished run that fits this one (its manifest and
the model's config; no weights), and, when asked, the user's files are read once as the job will read them. The
places where a run is submitted call it once: the CLI (`lamp train`, `lamp submit`, `lamp study start`, ...), the
New job form, the Study tab.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import ConfigError, Problem
from core.spec import DataConfig, RunSpec
from core.tasks.files import FileCheck, check_user_files
from core.tasks.reading import Limits
from core.warm_start import warm_start_problems


def missing_files(data: DataConfig) -> list[Problem]:
    return [(setting, f"{flag} {path}: no such file")
            for setting, flag, path in (("train_file", "--train", data.train_file),
                                        ("eval_file", "--eval", data.eval_file))
            if path is not None and not Path(path).is_file()]


def check_inputs(spec: RunSpec, *, read_within: Limits | None = None) -> FileCheck | None:
    """ConfigError listing every missing file and warm-start mismatch, each under its setting. With `read_within`,
    the user's files are then read (one streaming pass each, within those limits) and what was found is returned:
    DataError names each problem's setting (the file, a column, the template)."""
    problems = [*missing_files(spec.data), *warm_start_problems(spec)]
    if problems:
        raise ConfigError(*problems)
    d = spec.data
    if read_within is None or d.train_file is None:
        return None
    return check_user_files(d.train_file, d.eval_file, text_column=d.text_column, label_column=d.label_column,
                            template=d.template, kind=d.kind, limits=read_within, strict=d.strict,
                            eval_labels=d.eval_labels)
