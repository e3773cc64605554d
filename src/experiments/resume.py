"""``python -m experiments.resume``: continue a run from its checkpoint (see
:mod:`.reproduce.resume`)."""

import sys

from experiments.reproduce.resume import main

if __name__ == "__main__":
    sys.exit(main())
