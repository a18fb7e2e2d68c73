"""Flows: bijections returning (y, log|det J|), base distributions, and the Flow container."""

from boltzflow.flows.base import Base, Flow, Layer

__all__ = ["Base", "Flow", "Layer"]
