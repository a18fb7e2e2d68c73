"""Training: the method contract, the methods, and the one loop that runs any of them.

- :mod:`.api`: a method is ``init`` and a pure ``step`` (:class:`Method`), built for a :class:`Problem`; its
  :class:`Cost` in flow and target evaluations; :func:`gradient_step`.
- :mod:`.fab` (FAB, alpha-divergence by AIS + prioritised buffer), :mod:`.objectives` (path KL, ML, KL + ML,
  alpha = 2 by the flow's own samples), :mod:`.vae`; :mod:`.registry` names them (:data:`METHODS`).
- :mod:`.buffer`: FAB's prioritised replay buffer; :mod:`.data`: minibatches of a data set for ML.
- :mod:`.state`: settings, optimiser, parameter average, the training state; :mod:`.loop`: :func:`train`.
"""

from boltzflow.train.api import Cost, Method, Problem, gradient_step, masked_mean
from boltzflow.train.fab import FabSettings, build_fab
from boltzflow.train.loop import Trained, read_history, train
from boltzflow.train.registry import METHODS
from boltzflow.train.state import TrainSettings, TrainState, key_seed, make_optimizer, seed_key

__all__ = ["Cost", "Method", "Problem", "gradient_step", "masked_mean", "FabSettings", "build_fab", "Trained",
           "read_history", "train", "METHODS", "TrainSettings", "TrainState", "key_seed", "make_optimizer", "seed_key"]
