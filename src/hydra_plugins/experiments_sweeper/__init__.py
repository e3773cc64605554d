"""The sweeper of ``hydra/sweeper=optuna``: the project's search on a current Optuna."""
