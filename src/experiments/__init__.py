"""Declarative, config-driven PyTorch experiments recorded in MLflow."""

__version__ = "0.1.0"
