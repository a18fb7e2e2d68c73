"""A molecule at a temperature as a target: p(x) proportional to exp(-E(x) / kT) on Cartesian positions.

x is the flattened positions in nm, ``(n, 3 n_atoms)`` (66 for alanine dipeptide); internal coordinates are a
layer of the model (:class:`boltzflow.flows.internal.InternalCoordinates`), not of the target. The energy comes
from one of two engines with the same interface, ``x (n, 3 n_atoms) -> E (n,)`` in kJ/mol:

- ``engine: jax`` (default): the force field in JAX (:mod:`boltzflow.molecules.forcefield`), parameters read from
  the OpenMM System; batched, jitted, differentiated by autodiff, float32 or float64 as x is.
- ``engine: openmm``: OpenMM itself in a pool of worker processes (:mod:`boltzflow.molecules.openmm_engine`),
  called from jitted JAX with OpenMM's forces as the gradient.

Energies are regularised as FAB's alanine dipeptide target does, in units of kT (u = E / kT):

    u_reg = u                                  if u <= u_cut
          = u_cut + log(1 + u - u_cut)         if u_cut < u <= u_max      (linear-log: large but finite gradients)
          = u_cut + log(1 + u_max - u_cut)     above u_max,

with u_cut = 1e8 and u_max = 1e20 by default, so a flow sample with nearly overlapping atoms has a finite weight
of ~ 0 and a usable gradient instead of an overflow. A non-finite energy (coincident atoms, NaN positions) gives
log p = -inf, which boltzflow's samplers and losses treat as an invalid point (weight zero, counted).

Stereoisomer. A mirror image has the same energy, but it is another molecule (D- instead of L-alanine) that MD
from the L-form never visits. With ``chirality: true`` (default) the target is the Boltzmann distribution of the
starting structure's stereoisomer: log p = -inf where a stereocentre has the other handedness
(:class:`boltzflow.molecules.chirality.Chirality`), so AIS, FAB's buffer and every importance weight drop such
samples, as the FAB paper filters them during training.

Report (:meth:`MoleculeTarget.metrics`): ``chirality_fraction`` (the model samples with the reference structure's
handedness; the others get weight 0 in what follows, as FAB filters them) and, where the target has reference MD
samples: the histogram KL of each named torsion's marginal and of the (phi, psi) plot, unweighted and
``_reweighted`` (boltzflow.molecules.metrics); the phi > 0 population of each residue, reweighted, beside the
reference's; and E_p[log q] on the reference samples in two conventions:

- ``mean_log_q_reference``: log q(x) of the Cartesian conformation, the internal-coordinate layer's log-det
  included (uniformly distributed orientation and unit-density position, boltzflow.flows.internal);
- ``mean_log_q_reference_frame`` (where the target has a ``phi`` torsion): the density of the 3N - 6 coordinates
  of the canonical frame CA, N, C, the FAB paper's convention (its Table 2):
  log q_frame = log q(x) + log(b1^2 b2 sin a) (boltzflow.molecules.metrics.frame_log_jacobian);
- ``mean_log_p_reference`` (and ``_frame``): E_ref[log p~] - log Z_hat = -H(p) on the same scale, which no model's
  E_p[log q] exceeds, and ``forward_kl_reference`` = KL(p || q), their difference (scale-free).

The frame convention: docs/concepts/internal-coordinates.md; what E_p[log q] measures: docs/benchmarks.md.
A system of several molecules adds ``pose_fraction`` and ``pose_fraction_reweighted`` (``_1``, ``_2``, ... with
several guests): the fraction of samples with each guest in its starting pose (boltzflow.molecules.metrics.pose_rmsd).
Of each model sample the report keeps the named torsions' angles (float32), its handedness and log weight (37 bytes
for alanine dipeptide). Pictures: Ramachandran plot and torsion marginals (boltzflow.plot.plot_molecule_samples).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.molecules.forcefield import batched_energy, read_forcefield
from boltzflow.molecules.chirality import Chirality
from boltzflow.molecules.metrics import (POSE_RMSD, basin_populations, frame_log_jacobian, molecular_metrics,
                                         named_torsions, normalised_weights, pose_rmsd, ramachandran_pairs,
                                         residue_suffix, torsion_angles)
from boltzflow.molecules.openmm_engine import OpenMMEngine
from boltzflow.molecules.reference import builtin_reference, load_reference
from boltzflow.molecules.system import MolecularSystem, load_system
from boltzflow.targets.base import Target
from boltzflow.targets.report import ModelSamples, Pictures, apply_in_chunks

#: Molar gas constant in kJ / (mol K) (CODATA 2018, as openmm.unit.MOLAR_GAS_CONSTANT_R).
GAS_CONSTANT = 8.314462618e-3
ENGINES = ("jax", "openmm")


def regularize_energy(u: jax.Array, cut: float, maximum: float) -> jax.Array:
    """FAB's linear-log regularisation of a reduced energy u = E / kT (module docstring)."""
    u = jnp.minimum(u, maximum)
    excess = jnp.maximum(u - cut, 0.0)
    return jnp.where(u > cut, cut + jnp.log1p(excess), u)


class MoleculeTarget(Target):
    """Boltzmann distribution exp(-E(x) / kT) of a molecule at ``temperature`` (kelvin).

    Args:
        molecule: a built-in name (``"aldp_implicit"``, ``"aldp_vacuum"``), a source dict or a
            :class:`MolecularSystem` (see :func:`boltzflow.molecules.system.load_system`).
        temperature: kelvin.
        engine: ``"jax"`` or ``"openmm"``.
        platform: OpenMM platform of the openmm engine (``"CPU"`` or ``"Reference"``).
        n_workers: worker processes of the openmm engine (default: one per core).
        energy_cut: the regularisation's first threshold u_cut, in kT.
        energy_max: its second threshold u_max, in kT.
        reference: an ``.npz`` of reference samples (``x``, (n, 3 n_atoms), e.g. ``reference.npz`` of
            ``boltzflow md``) for the molecular metrics of ``boltzflow evaluate``; default: the set shipped with
            boltzflow for this molecule and temperature, if there is one.
        chirality: keep only the starting structure's stereoisomer (module docstring).
    """

    log_z = None

    def __init__(self, molecule="aldp_implicit", temperature: float = 300.0, engine: str = "jax",
                 platform: str = "CPU", n_workers: int | None = None, energy_cut: float = 1e8,
                 energy_max: float = 1e20, reference: str | None = None, chirality: bool = True):
        if engine not in ENGINES:
            raise BoltzflowError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
        temperature = float(temperature)
        if not np.isfinite(temperature) or temperature <= 0:
            raise BoltzflowError(f"temperature must be a positive number of kelvin, got {temperature}")
        if not 0 < energy_cut < energy_max:
            raise BoltzflowError(f"need 0 < energy_cut < energy_max, got {energy_cut}, {energy_max}")
        self.molecule: MolecularSystem = load_system(molecule)
        self.temperature = temperature
        self.kT = GAS_CONSTANT * temperature
        self.engine = engine
        self.energy_cut, self.energy_max = float(energy_cut), float(energy_max)
        self.name = f"{self.molecule.name}_{temperature:g}K"
        self.dim = self.molecule.dim
        self.reference_path = reference or builtin_reference(self.molecule.name, temperature)
        self.chirality = Chirality.from_system(self.molecule)
        self.keep_chirality = bool(chirality)
        if engine == "jax":
            self.params = read_forcefield(self.molecule.openmm_system())
            self.energy_kj = batched_energy(self.params)
        else:
            self.energy_kj = OpenMMEngine(self.molecule, platform=platform, n_workers=n_workers).energy_fn()

    def reduced_energy(self, x: jax.Array) -> jax.Array:
        """E(x) / kT, regularised; +inf where the energy is not finite."""
        u = self.energy_kj(x) / self.kT
        return jnp.where(jnp.isfinite(u), regularize_energy(u, self.energy_cut, self.energy_max), jnp.inf)

    def _log_prob(self, x: jax.Array) -> jax.Array:
        log_p = -self.reduced_energy(x)
        return jnp.where(self.chirality.mask(x), log_p, -jnp.inf) if self.keep_chirality else log_p

    @cached_property
    def torsions(self) -> dict[str, tuple[int, int, int, int]]:
        """The named torsions' atoms (boltzflow.molecules.metrics.named_torsions)."""
        return named_torsions(self.molecule)

    def sample_rows(self, x: jax.Array, log_w: jax.Array) -> dict[str, jax.Array]:
        """x, log w and the handedness mask of each model sample."""
        return {"x": x, "log_w": log_w, "chiral": self.chirality.mask(x)}

    def keep_rows(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The named torsions' angles ``(n, T)`` (float32) instead of x, the mask and the log weights (float64)."""
        angles = torsion_angles(rows["x"], self.torsions)
        columns = np.array([angles[name] for name in self.torsions], np.float32).reshape(len(angles), len(rows["x"]))
        return {"angles": columns.T, "chiral": rows["chiral"], "log_w": np.asarray(rows["log_w"], np.float64),
                "pose_rmsd": pose_rmsd(rows["x"], self.molecule).astype(np.float32)}

    def metrics(self, s: ModelSamples) -> dict:
        """The molecular metrics (module docstring) of the model's samples, those of the other handedness left
        out."""
        chiral = s.kept["chiral"]
        out = super().metrics(s) | {"chirality_fraction": float(chiral.mean())}
        model = {name: s.kept["angles"][chiral, i] for i, name in enumerate(self.torsions)}
        log_w = s.kept["log_w"][chiral]
        in_pose = s.kept["pose_rmsd"][chiral] <= POSE_RMSD
        weights = normalised_weights(log_w)
        for c in range(in_pose.shape[1]):
            suffix = f"_{c + 1}" if in_pose.shape[1] > 1 else ""
            out[f"pose_fraction{suffix}"] = float(in_pose[:, c].mean())
            out[f"pose_fraction{suffix}_reweighted"] = float(np.sum(weights * in_pose[:, c]))
        if self.reference_path is None:
            return out
        ref_x = load_reference(self.reference_path)["x"]
        ref = torsion_angles(ref_x, self.torsions)
        out.update(molecular_metrics(self.molecule, ref, model, log_w))
        if s.log_q is not None:
            out.update(self._log_q_reference(s, ref_x))
        for phi, psi in ramachandran_pairs(self.molecule):  # phi_positive, or phi_positive_2 for residue 2's
            residue = residue_suffix(phi)
            out[f"phi_positive{residue}_reweighted"] = basin_populations(model[phi], model[psi], log_w)["phi_positive"]
            out[f"phi_positive{residue}_reference"] = basin_populations(ref[phi], ref[psi])["phi_positive"]
        return out

    def _log_q_reference(self, s: ModelSamples, ref_x: np.ndarray) -> dict:
        """E_ref[log q], -H and KL(p || q) on the reference (module docstring), in the FAB paper's frame too."""
        xs = jnp.asarray(ref_x, jnp.result_type(float))
        log_q_ref = np.asarray(s.log_q(xs), np.float64)
        log_p_ref = np.asarray(apply_in_chunks(jax.jit(self.log_prob), xs, s.chunk), np.float64)
        out = {"mean_log_q_reference": float(np.mean(log_q_ref)),
               "mean_log_p_reference": float(np.mean(log_p_ref) - s.weights.log_z()[0])}
        out["forward_kl_reference"] = out["mean_log_p_reference"] - out["mean_log_q_reference"]
        if "phi" in self.torsions:  # canonical frame of the FAB paper: CA at the origin, N on +x, C in the xy plane
            _, n, ca, c = self.torsions["phi"]
            frame = float(np.mean(frame_log_jacobian(ref_x, (ca, n, c))))
            out["mean_log_q_reference_frame"] = out["mean_log_q_reference"] + frame
            out["mean_log_p_reference_frame"] = out["mean_log_p_reference"] + frame
        return out

    def draw(self, pictures: Pictures) -> list[Path]:
        """``ramachandran.png`` and ``torsions.png`` of 10,000 weighted model samples, beside the reference's."""
        x, log_w = pictures.weighted_samples(pictures.key, 10_000)
        ref = self.reference_path and load_reference(self.reference_path)["x"]
        return pictures.plot_molecule_samples(self, x, log_w, pictures.out_dir, reference_x=ref)

    def __repr__(self) -> str:
        return (f"MoleculeTarget({self.molecule.name!r}, temperature={self.temperature:g} K, engine={self.engine!r}, "
                f"dim={self.dim})")
