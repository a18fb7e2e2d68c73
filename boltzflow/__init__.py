"""boltzflow: sample Boltzmann distributions with learned flows.

Two methods on one set of parts:
- Stochastic Normalizing Flows (Wu, Koehler & Noe, NeurIPS 2020): ``boltzflow.snf`` (blocks, layouts, path space)
  and the path objectives in ``boltzflow.train.objectives``.
- Flow Annealed Importance Sampling Bootstrap (Midgley et al., ICLR 2023): ``boltzflow.train.fab``.

Targets live in ``boltzflow.targets``, flows in ``boltzflow.flows``, MCMC kernels in ``boltzflow.mcmc``,
annealed importance sampling in ``boltzflow.ais`` and estimators in ``boltzflow.estimators``; one config is read in
``boltzflow.config``, turned into objects and trained in ``boltzflow.experiment`` by the one loop
``boltzflow.train.loop``.
"""

__version__ = "0.1.0"
