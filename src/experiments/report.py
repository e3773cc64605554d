"""``python -m experiments.report``: compare runs (see :mod:`.sweeps.report.command`)."""

import sys

from experiments.sweeps.report.command import main

if __name__ == "__main__":
    sys.exit(main())
