"""The command line: ``python -m experiments`` (and the ``experiments`` console script).

- ``app``: Hydra's application (``@hydra.main``) and the command around it.
- ``job``: one job of a single run or a sweep, handed to the runner.
- ``exits``: the one error line, the exit statuses (0, 1, 75, 128 + a signal's number).
- ``messages``: Hydra's, OmegaConf's and the project's errors in one line.

The command sits on top: it imports the sweeps, the runner, the tasks (their schemas, which
it registers with Hydra), the record path and the shared modules, and nothing imports it.
``experiments/__main__.py`` starts the recording process before anything heavy is imported,
then hands over to :func:`.app.main`.
"""
