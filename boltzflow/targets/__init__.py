"""Targets: batched unnormalised log densities with, where known, exact log Z and exact samples."""

from boltzflow.targets.base import Target, check_batch

__all__ = ["Target", "check_batch"]
