"""Exceptions with messages meant for users.

``ConfigError`` and ``InputError`` stop a run at start-up (bad configuration, missing dataset);
``ObjectError`` concerns one object only: it is recorded in the run's error report and the other
objects are profiled.
"""


class ScipGpuError(Exception):
    """Base class of the errors scip_gpu reports to users."""


class ConfigError(ScipGpuError):
    """The configuration is invalid; the message names the key and the cause."""


class InputError(ScipGpuError):
    """The dataset as a whole cannot be read (missing path, no matching files, ...)."""


class OutputError(ScipGpuError):
    """The output folder cannot be used (exists already, not writable, ...)."""


class ObjectError(ScipGpuError):
    """One object cannot be profiled; the run goes on without it.

    Parameters
    ----------
    message : str
        What is wrong, naming the input (file, index) and the cause.
    stage : str
        Pipeline stage that found the problem (``load``, ``validate``, ``mask``, ``features``).
    """

    def __init__(self, message: str, stage: str = "load"):
        super().__init__(message)
        self.stage = stage


def describe_exception(exc: BaseException, limit: int = 400) -> str:
    """``Type: message`` of an unexpected exception, shortened for logs and error reports."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 20] + " ... (shortened)"


class RunIncomplete(ScipGpuError):
    """Partitions could not be run for a reason outside their inputs (workers lost for good, the
    scheduler gone, no worker connected, a partition whose task failed as a whole): the finished
    partitions are kept and ``resume=true`` runs the others. Exit status 3."""

    exit_status = 3


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a run; the message says how to finish it."""


def disk_full(exc: BaseException) -> bool:
    """Whether an exception (or one it was raised from) is a full disk or an exceeded quota.

    pyarrow and h5py raise OSError without ``errno`` and name the cause in the message only;
    HDF5 failing to flush or close a file (h5py) raises RuntimeError, naming it the same way."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return True
        if isinstance(exc, (OSError, RuntimeError)):
            text = str(exc)
            if "No space left on device" in text or "Disk quota exceeded" in text or "errno = 28" in text:
                return True
        exc = exc.__cause__ or exc.__context__
    return False
