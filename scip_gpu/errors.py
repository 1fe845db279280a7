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


class StorageUnavailable(ScipGpuError):
    """Reading an input failed for a reason of the storage or the network, not of the input (a
    stale NFS handle, a timeout, a connection reset or refused, an unreachable host, too many open
    files...): an infrastructure failure. It is never recorded as the object's error: it fails
    the partition, which the cluster runs again (``cluster.retries``) and, if it keeps failing,
    leaves unfinished for ``resume=true`` (exit status 3)."""


def _transient_errnos() -> frozenset:
    import errno

    names = ("ESTALE", "ETIMEDOUT", "ENOTCONN", "ECONNRESET", "ECONNABORTED", "ECONNREFUSED", "EHOSTUNREACH",
             "EHOSTDOWN", "ENETUNREACH", "ENETDOWN", "ENETRESET", "ESHUTDOWN", "ENOLINK", "EAGAIN", "EWOULDBLOCK",
             "EINTR", "EMFILE", "ENFILE")
    return frozenset(getattr(errno, n) for n in names if hasattr(errno, n))


#: errnos of a read that failed because of the storage or the network, not of the file read. Not
#: among them: EIO (also a bad sector of one file: that file's error), ENOENT, EACCES, EISDIR...
#: (the input's problem), ENOSPC and EDQUOT (a full disk, ``disk_full``).
TRANSIENT_ERRNOS = _transient_errnos()


def transient_io(exc: BaseException) -> bool:
    """Whether an exception (or one it was raised from) is an I/O failure of the storage or the
    network (``TRANSIENT_ERRNOS``; Python's ``ConnectionError``, ``TimeoutError``; an OSError or
    RuntimeError without ``errno`` naming one in its message, as h5py's ``errno = 116``)."""
    import os

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StorageUnavailable):
            return True
        if isinstance(exc, OSError):
            if exc.errno in TRANSIENT_ERRNOS or (
                    exc.errno is None and isinstance(exc, (ConnectionError, TimeoutError))):
                return True
        if isinstance(exc, (OSError, RuntimeError)) and getattr(exc, "errno", None) is None:
            text = str(exc)
            if any(f"errno = {e}," in text or f"errno = {e})" in text or f"[Errno {e}]" in text
                   or os.strerror(e) in text for e in TRANSIENT_ERRNOS):
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def resolve_name(name, default=None):
    """An object's name given as a string or as a function giving it (called here: a message must
    come out whatever the row holds, so a failing function gives ``default``)."""
    if not callable(name):
        return name
    try:
        return name()
    except Exception:  # noqa: BLE001
        return default


def raise_if_transient(exc: BaseException, name=None) -> None:
    """Raise ``StorageUnavailable`` (naming ``name``, a string or a function giving it, and the
    cause) when ``exc`` is a transient I/O failure (``transient_io``): never recorded as one
    object's error. Called wherever an object's failure is about to be recorded."""
    if not transient_io(exc):
        return
    if isinstance(exc, StorageUnavailable):
        raise exc
    name = resolve_name(name)
    what = f"{name}: " if name else ""
    raise StorageUnavailable(f"{what}cannot be read now ({describe_exception(exc)}): a failure of the storage or "
                             "the network, not of the input") from exc
