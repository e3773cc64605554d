"""``python -m experiments`` and the ``experiments`` console script.

Importing this module does nothing. :func:`main` first starts the recording process and
pauses the garbage collector (so that MLflow's import and the store's opening, in that
process, overlap with this one importing torch and composing the config), then imports the
command line and runs it. A command that runs nothing (``--help``, ``--cfg``) starts nothing.
"""

import sys

NO_RUN_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--version")


def runs_something(argv: list[str]) -> bool:
    """Whether the command line will run a task (not only print help or a config)."""
    return not any(arg in NO_RUN_FLAGS or arg.startswith("--shell-completion") for arg in argv)


def main() -> None:
    """The command: start what runs beside it, then hand over to the command line."""
    if runs_something(sys.argv[1:]):
        from experiments import process
        from experiments.record import client

        client.start_early()
        process.pause_collector()
    from experiments.command import app

    app.main()


if __name__ == "__main__":
    main()
