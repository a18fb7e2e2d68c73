"""Stochastic normalizing flows (Wu, Koehler & Noe, NeurIPS 2020), by job:

- :mod:`boltzflow.snf.block`: :class:`StochasticBlock`, MCMC moves as a layer returning its path ratio;
- :mod:`boltzflow.snf.builder`: SNF settings and layouts (:func:`make_snf`, :func:`blocks_only_snf`);
- :mod:`boltzflow.snf.paths`: the path space in which an SNF with Langevin blocks is a flow (FAB for SNFs).

Path weights are the same for every model (boltzflow.flows.paths); the training objectives are in
boltzflow.train.objectives.
"""

from boltzflow.snf.block import StochasticBlock
from boltzflow.snf.builder import BlockSettings, SNFSettings, blocks_only_snf, make_snf

__all__ = ["BlockSettings", "SNFSettings", "StochasticBlock", "blocks_only_snf", "make_snf"]
