"""``python -m experiments.sync [PATH ...]``: upload run journals (see :mod:`.record.sync`)."""

import sys

from experiments.record.sync import main

if __name__ == "__main__":
    sys.exit(main())
