"""The task registry in Hydra: each registered task's settings and config (see
``experiments.tasks.registry``)."""
