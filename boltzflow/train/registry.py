"""Training methods by name: each with its settings class (a config's ``method`` section) and its builder.

=============  ====================================================  ==============================
name           objective                                             settings
=============  ====================================================  ==============================
fab            alpha-divergence by AIS + replay buffer (FAB)         boltzflow.train.fab.FabSettings
reverse_kl     path KL, SNF eq. 13 (KL(q||p) for a flow)             none
forward_kl     ML on backward paths, SNF eq. 14 (ML for a flow)      data
kl_ml          kl_weight J_KL + ml_weight J_ML (SNF sec. 4)          kl_weight, ml_weight, data
alpha2_is      log E[w^2] with the model's own samples               none
vae            J_KL of a VAE's posteriors on data (SNF sec. 5)       boltzflow.vae.VAESettings
=============  ====================================================  ==============================

Every method trains flows and SNFs alike (path weights); FAB trains an SNF in its path space
(boltzflow.snf.paths), which exists for SNFs with unadjusted Langevin blocks only. ``vae`` trains a VAE
(boltzflow.vae) whose posterior is the config's flow or SNF, on the data set of the config's ``target``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from boltzflow.train.fab import FabSettings, build_fab
from boltzflow.train.objectives import (KLMLSettings, MLSettings, NoSettings, build_alpha2_is, build_forward_kl,
                                        build_kl_ml, build_reverse_kl)
from boltzflow.train.vae import build_vae
from boltzflow.vae.model import VAESettings

DEFAULT_METHOD = "fab"


class MethodEntry(NamedTuple):
    settings: type  # frozen dataclass of the method's options
    build: Callable  # build(settings, problem) -> Method
    uses_ais: bool  # needs problem.space and problem.ais (a model with a tractable density)


METHODS = {
    "fab": MethodEntry(FabSettings, build_fab, True),
    "reverse_kl": MethodEntry(NoSettings, build_reverse_kl, False),
    "forward_kl": MethodEntry(MLSettings, build_forward_kl, False),
    "kl_ml": MethodEntry(KLMLSettings, build_kl_ml, False),
    "alpha2_is": MethodEntry(NoSettings, build_alpha2_is, False),
    "vae": MethodEntry(VAESettings, build_vae, False),
}

#: name -> settings class, the choices of a config's ``method`` section
METHOD_SETTINGS = {name: entry.settings for name, entry in METHODS.items()}
