"""``python -m scip_gpu`` and the ``scip-gpu`` script: ``cli.main``, then a quick exit."""

import atexit
import logging
import os
import sys
import threading

from scip_gpu.cli import main as _cli_main


def exit_quickly(code) -> None:
    """End the process with ``code`` (as ``sys.exit``) without the interpreter's tear-down.

    Once a run is over, tearing down the interpreter (clearing the modules of NumPy, pandas,
    pyarrow, Dask, numba, AnnData, matplotlib...) takes about a second, spent after every
    output is written and closed. Here the exit handlers run (``atexit``: logging's flush,
    Dask's and multiprocessing's clean-up), the standard streams are flushed, and the process
    ends. The exit is the ordinary one when a thread that is not a daemon is still alive (work
    the interpreter would wait for), under a profiler or a debugger (they write or stop after the
    program), or with ``SCIP_GPU_QUICK_EXIT=0``."""
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        code = 1
    if (os.environ.get("SCIP_GPU_QUICK_EXIT", "1") == "0" or sys.getprofile() is not None
            or sys.gettrace() is not None
            or any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread())):
        sys.exit(code)
    try:
        atexit._run_exitfuncs()
        logging.shutdown()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - (a closed pipe): nothing more can be said
                pass
        os._exit(code)


def main(argv=None) -> None:
    try:
        _cli_main(argv)
    except SystemExit as exc:
        exit_quickly(exc.code)
    exit_quickly(0)


if __name__ == "__main__":
    main()
