"""`python -m unleash` and the `unleash` command (how the Slicer modules launch a job)."""
import os
import signal
import sys


def _interrupted_while_starting(number, frame):
    # Before the CLI takes the signals over (while the engine is imported) nothing has been read or
    # written: a cancel then is one line and the exit code of the signal, not a traceback.
    sys.stderr.write(f"unleash: error: interrupted by {signal.Signals(number).name}\n")
    os._exit(128 + number)


def run() -> int:
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _interrupted_while_starting)
    from .cli import main

    try:
        return main()
    finally:  # the work is done (or refused): a signal now ends the process as it would any other
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_DFL)


if __name__ == "__main__":
    raise SystemExit(run())
