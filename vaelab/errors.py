"""How a stage fails: one line that names the cause and what to do, no traceback unless asked."""

import os
import signal
import sys


class VaelabError(Exception):
    """A failure whose message already tells the user what went wrong and what to do."""


def run_stage(main) -> None:
    """Run a stage's main(); turn any failure into one line on stderr and a non-zero exit.

    VAELAB_DEBUG=1 shows the full traceback instead. SIGTERM is handled like Ctrl-C, so that a
    stopped stage still closes its MLflow run (as KILLED) and keeps its last checkpoint.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except KeyboardInterrupt:
        print("vaelab: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        if os.environ.get("VAELAB_DEBUG") == "1":
            raise
        if isinstance(err, VaelabError):
            message = str(err)
        else:
            message = f"{type(err).__name__}: {' '.join(str(err).split())} (set VAELAB_DEBUG=1 for the traceback)"
        print(f"vaelab: error: {message}", file=sys.stderr)
        sys.exit(1)


def _interrupt(signum, frame):
    raise KeyboardInterrupt
