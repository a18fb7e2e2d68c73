"""MCMC transition kernels on annealed densities pi_w = q^w_q p^w_p, each returning its log path ratio dS.

- :mod:`boltzflow.mcmc.point`: the cached batch :class:`Point` and the annealed density;
- :mod:`boltzflow.mcmc.base`: the kernel contract (:class:`Kernel`, :class:`KernelInfo`) and MH accept/reject;
- :mod:`boltzflow.mcmc.metropolis`, :mod:`~boltzflow.mcmc.hmc`, :mod:`~boltzflow.mcmc.langevin`: the kernels;
- :mod:`boltzflow.mcmc.registry`: :func:`make_kernel` by name;
- :mod:`boltzflow.mcmc.step_size`: per-distribution step sizes adapted to a target acceptance.
"""

from boltzflow.mcmc.base import Kernel, KernelInfo, metropolis_hastings
from boltzflow.mcmc.hmc import hmc_step, leapfrog
from boltzflow.mcmc.langevin import mala_step, ula_step, underdamped_step
from boltzflow.mcmc.metropolis import metropolis_step
from boltzflow.mcmc.point import Point, annealed_grad, annealed_log_prob, is_valid, make_point
from boltzflow.mcmc.registry import KERNELS, kernel_settings, make_kernel
from boltzflow.mcmc.step_size import StepSizeState, adapt_step_sizes, init_step_sizes

__all__ = [
    "Kernel", "KernelInfo", "metropolis_hastings", "hmc_step", "leapfrog", "mala_step", "ula_step",
    "underdamped_step", "metropolis_step", "Point", "annealed_grad", "annealed_log_prob", "is_valid", "make_point",
    "KERNELS", "kernel_settings", "make_kernel", "StepSizeState", "adapt_step_sizes", "init_step_sizes",
]
