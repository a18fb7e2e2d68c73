"""``make_kernel(name, **kwargs)``: kernels by name, with their settings bound.

=============  ===========================  ==============  =============  ============================
name           settings (defaults)          gradients       target_accept  exact w.r.t. pi_w
=============  ===========================  ==============  =============  ============================
metropolis     -                            no              0.3            yes (MH, detailed balance)
hmc            n_leapfrog=5                 n_leapfrog/step 0.65           yes (MH, detailed balance)
mala           -                            1/step          0.57           yes (MH, detailed balance)
ula            -                            1/step          None           no; exact path ratio dS
underdamped    n_steps=1, friction=1.0      n_steps/step    None           no; exact path ratio dS
=============  ===========================  ==============  =============  ============================
"""

from __future__ import annotations

import functools
import inspect

from boltzflow.errors import BoltzflowError
from boltzflow.mcmc import hmc, langevin, metropolis
from boltzflow.mcmc.base import Kernel

#: name -> (step function, needs gradients, default target acceptance, Metropolised)
KERNELS = {
    "metropolis": (metropolis.metropolis_step, False, metropolis.DEFAULT_TARGET_ACCEPT, True),
    "hmc": (hmc.hmc_step, True, hmc.DEFAULT_TARGET_ACCEPT, True),
    "mala": (langevin.mala_step, True, langevin.MALA_TARGET_ACCEPT, True),
    "ula": (langevin.ula_step, True, None, False),
    "underdamped": (langevin.underdamped_step, True, None, False),
}

_COMMON = ("key", "point", "w", "step_size", "log_q_fn", "log_p_fn")


def kernel_settings(name: str) -> dict:
    """The settings a kernel accepts, with their defaults."""
    fn = KERNELS[name][0]
    return {p.name: p.default for p in inspect.signature(fn).parameters.values() if p.name not in _COMMON}


def make_kernel(name: str, **settings) -> Kernel:
    """The kernel called ``name`` with ``settings`` bound (see the table above).

    Raises :class:`BoltzflowError` for an unknown name, unknown settings, or invalid values.
    """
    if name not in KERNELS:
        raise BoltzflowError(f"unknown MCMC kernel {name!r}; known: {', '.join(KERNELS)}")
    fn, needs_grad, target_accept, metropolised = KERNELS[name]
    known = kernel_settings(name)
    unknown = set(settings) - set(known)
    if unknown:
        hint = ", ".join(known) if known else "none"
        raise BoltzflowError(f"unknown setting(s) {sorted(unknown)} for kernel {name!r}; known: {hint}")
    for key in ("n_leapfrog", "n_steps"):
        if key in settings:
            v = settings[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise BoltzflowError(f"kernel {name!r}: {key} must be a positive integer, got {v!r}")
    if "friction" in settings and not float(settings["friction"]) >= 0:
        raise BoltzflowError(f"kernel {name!r}: friction must be >= 0, got {settings['friction']!r}")
    step = functools.partial(fn, **settings) if settings else fn
    evals = {**known, **settings}.get({"hmc": "n_leapfrog", "underdamped": "n_steps"}.get(name, ""), 1)
    return Kernel(name=name, step=step, needs_grad=needs_grad, target_accept=target_accept,
                  metropolised=metropolised, evals_per_step=int(evals))
