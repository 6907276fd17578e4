"""Exceptions raised by the engine. The edges (CLI, jobs, UI) turn them into messages for a person."""


class LampError(Exception):
    """Base class of every error LAMP Studio raises on purpose."""


class ConfigError(LampError, ValueError):
    """A setting is invalid. The message names each bad value and how to fix it."""


class DataError(LampError, ValueError):
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
