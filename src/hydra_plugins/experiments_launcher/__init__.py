"""Hydra plugins of the experiments package (Hydra loads launchers only from hydra_plugins)."""
