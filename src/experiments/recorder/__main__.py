"""``python -m experiments.recorder``: the recording process (started by ``client``)."""

from experiments.recorder.service import main

if __name__ == "__main__":
    main()
