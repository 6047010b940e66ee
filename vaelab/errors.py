"""How a stage fails: one line that names the cause and what to do, no traceback unless asked."""

import os
import signal
import sys
from contextlib import contextmanager


class VaelabError(Exception):
    """A failure whose message already tells the user what went wrong and what to do."""


def run_stage(main) -> None:
    """Run a stage's main(); turn any failure into one line on stderr and a non-zero exit.

    VAELAB_DEBUG=1 shows the full traceback instead. SIGTERM is handled like Ctrl-C, so that a
    stopped stage still closes its MLflow run (as KILLED) and keeps its last checkpoint.
    """
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        from vaelab.paths import clean_scratch  # paths reports its errors through this module

        clean_scratch()
        main()
    except KeyboardInterrupt:
        print("vaelab: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        if os.environ.get("VAELAB_DEBUG") == "1":
            raise
        if isinstance(err, VaelabError):
            message = str(err)
        elif store_problem := _store_problem(err):
            message = store_problem
        elif cause := server_unreachable(err):
            message = (f"the MLflow tracking server {_tracking_uri()} does not answer ({cause}); "
                       "training done so far is kept in the checkpoint: run `dvc repro` again once the server is "
                       "back, and it resumes where it stopped")
        else:
            message = f"{type(err).__name__}: {' '.join(str(err).split())} (set VAELAB_DEBUG=1 for the traceback)"
        print(f"vaelab: error: {message}", file=sys.stderr)
        sys.exit(1)


# what SQLite says of an MLflow store it cannot use, and what to do about it
STORE_FAILURES = {
    "database disk image is malformed": "is damaged ({cause}): restore it from a backup or move it away, or set "
    "MLFLOW_TRACKING_URI to another store",
    "file is not a database": "is not an SQLite database ({cause}): restore it from a backup or move it away, or set "
    "MLFLOW_TRACKING_URI to another store",
    "database is locked": "stayed locked by another process for longer than the busy timeout ({cause}): run again when "
    "it is free, or give a team a tracking server through MLFLOW_TRACKING_URI",
}


def _store_problem(err: BaseException) -> str | None:
    """One line for an MLflow store that SQLite cannot use, whichever library wrapped the error."""
    for cause, advice in STORE_FAILURES.items():
        if any(cause in part for part in _messages(err)):
            return (f"the MLflow store {_tracking_uri()} {advice.format(cause=cause)}; training already done is kept "
                    "in the checkpoints and DVC outputs, and `dvc repro` completes the logging once the store works")
    return None


# what requests and urllib3 say of a tracking server that is gone, once MLflow's retries are spent
UNREACHABLE = ["Connection refused", "Failed to establish a new connection", "Connection reset", "Read timed out",
               "Name or service not known", "Remote end closed connection"]


def server_unreachable(err: BaseException) -> str | None:
    """The cause, if err is a tracking server that does not answer, whichever library wrapped it."""
    for part in _messages(err):
        for cause in UNREACHABLE:
            if cause in part:
                return cause
    return None


def _messages(err: BaseException | None) -> list[str]:
    text = []
    while err is not None:
        text.append(str(err))
        err = err.__cause__ or err.__context__
    return text


def _tracking_uri() -> str:
    mlflow = sys.modules.get("mlflow")
    return mlflow.get_tracking_uri() if mlflow else os.environ.get("MLFLOW_TRACKING_URI", "")


_critical_depth = 0
_interrupt_pending = False


def _interrupt(signum, frame):
    global _interrupt_pending
    if _critical_depth:
        _interrupt_pending = True
        return
    raise KeyboardInterrupt


@contextmanager
def uninterruptible():
    """Hold Ctrl-C and SIGTERM until the block ends.

    An interrupt inside a database transaction can leave the MLflow store unable to mark the
    run KILLED; it is raised right after the block instead.
    """
    global _critical_depth, _interrupt_pending
    _critical_depth += 1
    try:
        yield
    finally:
        _critical_depth -= 1
        if not _critical_depth and _interrupt_pending:
            _interrupt_pending = False
            raise KeyboardInterrupt
