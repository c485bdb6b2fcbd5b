"""`qfsync` and `python -m qfsync`: the command line, loaded under a guard for Ctrl-C."""

import sys

from qfsync.errors import EXIT_SIGINT


def main() -> None:
    try:
        from qfsync.cli import run
    except KeyboardInterrupt:  # Ctrl-C while the modules load: the status, not a traceback
        sys.exit(EXIT_SIGINT)
    run()


if __name__ == "__main__":
    main()
