"""Exceptions raised by the engine. The edges (CLI, jobs, UI) turn them into messages for a person."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable
from typing import Any

Problem = tuple[str | None, str]
"""(setting, message): the setting at fault by its name in core.spec (`rank`, `train_file`, `label_column`, ...),
or None when no single setting is; the message names the value and the fix. A form shows the message beside the
field of that setting; the CLI prints the messages."""


class LampError(Exception):
    """Base class of every error LAMP Studio raises on purpose."""


_NAMED = re.compile(r"\s*([a-z_]+)=")


def _pairs(items: Iterable[str | Problem]) -> tuple[Problem, ...]:
    out: list[Problem] = []
    for item in items:
        if isinstance(item, tuple):
            out.append(item)
            continue
        for line in str(item).splitlines():  # a plain message: one problem per line
            if line.strip():
                named = _NAMED.match(line)  # the method configs' convention: "rank=9 > length=4: ..."
                out.append((named.group(1) if named else None, line))
    return tuple(out)


class ProblemsError(LampError):
    """Problems listed together, each a (setting, message) pair. Raised with pairs, or with plain messages (one
    problem per line; a line that starts with `setting=` names that setting, as the method configs' checks do)."""

    def __init__(self, *problems: str | Problem) -> None:
        self.problems: tuple[Problem, ...] = _pairs(problems)
        super().__init__("\n".join(message for _, message in self.problems))

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), self.problems

    def about(self, setting: str) -> ProblemsError:
        """The same problems, those that named no setting now naming `setting` (e.g. the file a reader read)."""
        return type(self)(*((name or setting, message) for name, message in self.problems))


class ConfigError(ProblemsError, ValueError):
    """A setting is invalid. Each problem names the bad value and how to fix it."""


class DataError(ProblemsError, ValueError):
    """A data set could not be read or does not fit the task (names file, row and column)."""


class ModelLoadError(LampError):
    """A backbone or tokenizer could not be loaded."""


class DeviceError(LampError):
    """The requested device, dtype or quantization is not available here."""


class TrainingDiverged(LampError):
    """The loss became NaN or infinite."""


class OutOfMemory(LampError):
    """The device ran out of memory; the message says what to lower."""


class ArtifactError(LampError):
    """An artifact directory is missing files or was written by an incompatible version."""


class Cancelled(LampError):
    """Training was asked to stop before it finished."""


class StorageError(LampError):
    """A file or folder that must be written cannot be: the disk is full, the file system is read-only, or
    permission is denied. The message names the path and the fix."""


_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory",
                "failed to allocate", "bad_alloc", "defaultcpuallocator")


def is_out_of_memory(exc: BaseException | None) -> bool:
    """Whether an error, or one it was raised from, is an allocation failure of any kind: MemoryError, torch's
    OutOfMemoryError (CUDA), OutOfMemory, or a RuntimeError from an allocator ("DefaultCPUAllocator: can't allocate
    memory", "not enough memory: you tried to allocate ...")."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError | OutOfMemory) or type(exc).__name__ == "OutOfMemoryError":
            return True
        if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
            return True
        if isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MARKERS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


_WHY = {
    errno.ENOSPC: ("the disk is full", "free space there, or point LAMP_HOME (or LAMP_ARTIFACTS_DIR) at another disk"),
    errno.EDQUOT: ("the disk quota is used up", "free space there, or point LAMP_HOME at another disk"),
    errno.EROFS: ("the file system is read-only", "point LAMP_HOME at a writable folder"),
    errno.EACCES: ("permission denied", "make it writable for this user, or point LAMP_HOME at a folder you own"),
    errno.EPERM: ("operation not permitted", "make it writable for this user, or point LAMP_HOME at a folder you own"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "point LAMP_HOME at a folder"),
}


_WORDS = {"no space left on device": errno.ENOSPC, "file write failed": errno.ENOSPC,
          "disk quota exceeded": errno.EDQUOT, "read-only file system": errno.EROFS}


def storage_error(exc: BaseException, path: str | os.PathLike[str] | None = None) -> StorageError | None:
    """A StorageError naming the path, what is wrong and the fix, when `exc` (or one it was raised from) is a disk
    full / read-only / permission error; None for anything else."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageError):
            return current
        if isinstance(current, OSError) and current.errno in _WHY:
            what, fix = _WHY[current.errno]
            where = current.filename if current.filename is not None else path
            return StorageError(f"cannot write {where or 'a file'}: {what}; {fix}")
        # Writers that wrap the OS error in their own (torch's zip writer, safetensors' Rust I/O) keep its words.
        message = str(current).lower()
        for words, code in _WORDS.items():
            if words in message:
                what, fix = _WHY[code]
                return StorageError(f"cannot write {path or 'a file'}: {what} ({str(current).strip()[:200]}); {fix}")
        current = current.__cause__ or current.__context__
    return None
