"""``python -m experiments.rerun``: run a recorded run again (see :mod:`.reproduce.command`)."""

import sys

from experiments.reproduce.command import main

if __name__ == "__main__":
    sys.exit(main())
