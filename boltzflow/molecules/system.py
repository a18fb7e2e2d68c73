"""A molecule as boltzflow sees it: an OpenMM System plus the topology facts the rest of the package needs.

:func:`load_system` reads a molecule from

- a built-in name: ``"aldp_implicit"`` (alanine dipeptide, Amber ff96 + OBC1 implicit solvent, as openmmtools'
  ``AlanineDipeptideImplicit(constraints=None)`` builds it) or ``"aldp_vacuum"`` (``AlanineDipeptideVacuum``),
  both read with ``openmm.app`` from the prmtop / crd files that openmmtools ships (openmmtools itself is not
  imported: its pymbar import can switch JAX to 64 bits); ``"ace_ala3_nme_implicit"``, Ace-(Ala)3-Nme from
  boltzflow's own PDB (built by :mod:`boltzflow.molecules.peptide` and minimised) with ``amber96.xml`` +
  ``implicit/obc1.xml``, the force field of ``aldp_implicit`` (the same energies on alanine dipeptide);
- ``{"prmtop": PATH, "inpcrd": PATH, "implicit_solvent": None | "OBC1" | "OBC2" | "GBn" | "GBn2" | "HCT"}``;
- ``{"pdb": PATH, "forcefield": [XML, ...]}`` (``openmm.app.ForceField`` files, e.g. ``amber99sb.xml``), with
  ``"template": NAME`` to type the whole molecule by one residue template of the force field (CHARMM36's ``ALAD``
  for alanine dipeptide: :func:`as_one_residue`); the topology keeps the PDB's residues;
- ``{"openmmtools": "ClassName", **kwargs}``: an openmmtools test system (``constraints=None`` is passed unless
  given; the JAX float mode is restored after the import; a keyword the class does not take is refused, not
  ignored).

A file that is not what it should be (a PDB without atoms, one OpenMM cannot read) is one line naming it.

Every system is made without constraints, without a periodic box and without virtual sites (boltzflow moves every
atom; a bond constraint is a delta function no flow has): such a system is refused with one line saying why.
The System travels as its XML serialisation (picklable, so worker processes can rebuild it).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from dataclasses import dataclass, field

import numpy as np

from boltzflow.errors import BoltzflowError

#: Built-in molecules: name -> (where its files are: openmmtools' data or boltzflow's, the file, the other keys of
#: its source dict, description).
BUILTIN = {
    "aldp_implicit": ("openmmtools", "alanine-dipeptide-gbsa/alanine-dipeptide", {"implicit_solvent": "OBC1"},
                      "alanine dipeptide, Amber ff96 + OBC1 implicit solvent (22 atoms)"),
    "aldp_vacuum": ("openmmtools", "alanine-dipeptide-gbsa/alanine-dipeptide", {"implicit_solvent": None},
                    "alanine dipeptide in vacuum, Amber ff96"),
    "ace_ala3_nme_implicit": ("boltzflow", "ace_ala3_nme.pdb", {"forcefield": ["amber96.xml", "implicit/obc1.xml"]},
                              "Ace-(Ala)3-Nme, Amber ff96 + OBC1 implicit solvent as aldp_implicit (42 atoms)"),
}
#: boltzflow's own molecule files (and reference sets).
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def builtin_source(name: str) -> dict:
    """The source dict (module docstring) of a built-in molecule."""
    if name not in BUILTIN:
        raise BoltzflowError(f"unknown molecule {name!r}; built in: {', '.join(BUILTIN)} (or a dict with "
                             "prmtop/inpcrd, pdb/forcefield or openmmtools)")
    where, file, keys, _ = BUILTIN[name]
    if where == "openmmtools":
        base = os.path.join(openmmtools_data_dir(), file)
        return {"prmtop": base + ".prmtop", "inpcrd": base + ".crd", **keys, "name": name}
    return {"pdb": os.path.join(DATA, file), **keys, "name": name}


def _openmm():
    try:
        import openmm
        import openmm.app
    except ImportError:
        raise BoltzflowError("molecular targets need OpenMM: pip install 'boltzflow[molecules]' "
                             "(or pip install openmm)") from None
    return openmm


@dataclass(frozen=True, eq=False)
class MolecularSystem:
    """An OpenMM System without constraints, its topology and a starting structure.

    Attributes:
        name: short name for reports.
        system_xml: the OpenMM System, serialised (``openmm.XmlSerializer``).
        positions: starting structure, ``(n_atoms, 3)`` in nm (float64).
        masses: atomic masses in dalton, ``(n_atoms,)``.
        elements: element symbol of each atom ("C", "H", ...; "" if unknown).
        atom_names: atom names from the topology.
        residue_names: residue name of each atom.
        residue_index: residue number (0-based) of each atom.
        bonds: ``(n_bonds, 2)`` int array of bonded atom pairs (from the topology; if it has none, from the
            HarmonicBondForce), each pair sorted, rows sorted.
    """

    name: str
    system_xml: str = field(repr=False)
    positions: np.ndarray = field(repr=False)
    masses: np.ndarray = field(repr=False)
    elements: tuple[str, ...] = field(repr=False)
    atom_names: tuple[str, ...] = field(repr=False)
    residue_names: tuple[str, ...] = field(repr=False)
    residue_index: np.ndarray = field(repr=False)
    bonds: np.ndarray = field(repr=False)

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[0])

    @property
    def dim(self) -> int:
        """Dimension of a flattened conformation, 3 x n_atoms."""
        return 3 * self.n_atoms

    def openmm_system(self):
        """A fresh ``openmm.System`` (deserialised from :attr:`system_xml`)."""
        return _openmm().XmlSerializer.deserialize(self.system_xml)

    def force_names(self) -> list[str]:
        return [type(f).__name__ for f in self.openmm_system().getForces()]

    def __repr__(self) -> str:
        return f"MolecularSystem({self.name!r}, n_atoms={self.n_atoms}, forces={self.force_names()})"


def openmmtools_data_dir() -> str:
    """The ``data`` folder of the installed openmmtools package, found without importing it."""
    spec = importlib.util.find_spec("openmmtools")
    if spec is None or not spec.submodule_search_locations:
        raise BoltzflowError("the built-in alanine dipeptide files come with openmmtools: pip install openmmtools")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def as_one_residue(topology, name: str):
    """The same atoms and bonds as one residue called ``name``: for force fields with a template for a whole small
    molecule (CHARMM36's ALAD, alanine dipeptide), which openmm.app otherwise reaches only after slow, failed
    patch searches over the residues.

    Example:
        >>> top = as_one_residue(app.PDBFile("aldp.pdb").topology, "ALAD")  # doctest: +SKIP
        >>> app.ForceField("charmm36_2024.xml").createSystem(top)  # doctest: +SKIP
    """
    app = _openmm().app
    top = app.Topology()
    res = top.addResidue(name, top.addChain())
    atoms = [top.addAtom(a.name, a.element, res) for a in topology.atoms()]
    for a, b in topology.bonds():
        top.addBond(atoms[a.index], atoms[b.index])
    return top


def _check_file(path: str, what: str) -> str:
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise BoltzflowError(f"{what}: no such file {path!r}")
    return os.fspath(path)


def _from_prmtop(prmtop_path: str, inpcrd_path: str, implicit_solvent, name: str):
    openmm = _openmm()
    app = openmm.app
    prmtop = app.AmberPrmtopFile(_check_file(prmtop_path, "prmtop"))
    solvents = {None: None, "OBC1": app.OBC1, "OBC2": app.OBC2, "GBn": app.GBn, "GBn2": app.GBn2, "HCT": app.HCT}
    if implicit_solvent not in solvents:
        raise BoltzflowError(f"implicit_solvent {implicit_solvent!r} unknown; expected one of "
                             f"{[k for k in solvents if k]} or null")
    system = prmtop.createSystem(implicitSolvent=solvents[implicit_solvent], constraints=None,
                                 nonbondedMethod=app.NoCutoff, rigidWater=False, removeCMMotion=True)
    positions = app.AmberInpcrdFile(_check_file(inpcrd_path, "inpcrd")).getPositions(asNumpy=True)
    return system, prmtop.topology, positions, name


def _from_pdb(pdb_path: str, forcefield, name: str, template: str | None = None):
    openmm = _openmm()
    app = openmm.app
    pdb = _read_pdb(app, _check_file(pdb_path, "pdb"))
    files = [forcefield] if isinstance(forcefield, str) else list(forcefield or [])
    if not files:
        raise BoltzflowError("a pdb molecule needs 'forcefield': a list of OpenMM force-field XML files")
    topology, options = pdb.topology, {}
    if template is not None:  # the force field types the whole molecule by this template; the PDB keeps its residues
        topology = as_one_residue(pdb.topology, str(template))
        options["residueTemplates"] = {next(topology.residues()): str(template)}
    try:
        ff = app.ForceField(*files)
        system = ff.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False,
                                 **options)
    except (ValueError, OSError, Exception) as e:  # OpenMM raises plain Exceptions for template mismatches
        raise BoltzflowError(f"OpenMM could not build {pdb_path!r} with {files}: {e}") from None
    return system, pdb.topology, pdb.getPositions(asNumpy=True), name


def _read_pdb(app, path: str):
    """``openmm.app.PDBFile(path)``; a file that is not a PDB is one line naming it (OpenMM's error chained)."""
    with open(path, errors="replace") as f:
        if not any(line.startswith(("ATOM", "HETATM")) for line in f):
            raise BoltzflowError(f"{path} is not a PDB file: it has no ATOM or HETATM records")
    try:
        return app.PDBFile(path)
    except Exception as e:  # noqa: BLE001 -- OpenMM's errors for a malformed file: IndexError, ValueError, ...
        why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise BoltzflowError(f"{path} is not a PDB file OpenMM can read ({why})") from e


def _keywords(cls: type) -> set[str]:
    """The keywords ``cls(...)`` takes: the named parameters of its ``__init__`` and those of its bases (an openmmtools
    test system passes ``**kwargs`` on to its base, whose ``TestSystem.__init__`` ignores what is left)."""
    names = set()
    for c in cls.__mro__[:-1]:  # not object
        if "__init__" in vars(c):
            names |= {p.name for p in list(inspect.signature(c.__init__).parameters.values())[1:]
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names


def _from_openmmtools(class_name: str, kwargs: dict, name: str):
    import jax  # openmmtools imports pymbar, which may turn on jax_enable_x64: put it back afterwards

    _openmm()
    x64 = jax.config.jax_enable_x64
    try:
        import openmmtools.testsystems as ts
    except ImportError:
        raise BoltzflowError("openmmtools is not installed: pip install openmmtools") from None
    finally:
        jax.config.update("jax_enable_x64", x64)
    cls = getattr(ts, class_name, None)
    if cls is None or not isinstance(cls, type):
        raise BoltzflowError(f"openmmtools.testsystems has no test system {class_name!r}")
    unknown = sorted(set(kwargs) - _keywords(cls))
    if unknown:
        raise BoltzflowError(f"openmmtools {class_name}: unknown keyword(s) {unknown}; it takes "
                             f"{sorted(_keywords(cls))}")
    kwargs = {"constraints": None, **kwargs}
    try:
        t = cls(**kwargs)
    except TypeError as e:
        raise BoltzflowError(f"openmmtools {class_name}({kwargs}): {e}") from None
    return t.system, t.topology, t.positions, name


def _as_nm(positions) -> np.ndarray:
    openmm = _openmm()
    if hasattr(positions, "value_in_unit"):
        positions = positions.value_in_unit(openmm.unit.nanometer)
    arr = np.asarray([[float(c) for c in p] for p in positions], np.float64)
    return arr.reshape(-1, 3)


def _check_supported(system, name: str) -> None:
    openmm = _openmm()
    if system.getNumConstraints():
        raise BoltzflowError(f"molecule {name!r} has {system.getNumConstraints()} constraints; boltzflow needs "
                             "a System made with constraints=None")
    if any(system.isVirtualSite(i) for i in range(system.getNumParticles())):
        raise BoltzflowError(f"molecule {name!r} has virtual sites, which boltzflow does not support")
    if system.usesPeriodicBoundaryConditions():
        raise BoltzflowError(f"molecule {name!r} uses a periodic box; boltzflow supports molecules without one "
                             "(NoCutoff)")
    if any(system.getParticleMass(i).value_in_unit(openmm.unit.dalton) <= 0 for i in range(system.getNumParticles())):
        raise BoltzflowError(f"molecule {name!r} has massless particles, which boltzflow does not support")


def molecular_system(system, topology, positions, name: str) -> MolecularSystem:
    """Wrap an ``openmm.System``, its ``openmm.app.Topology`` and positions (any length unit) after checks."""
    openmm = _openmm()
    _check_supported(system, name)
    n = system.getNumParticles()
    pos = _as_nm(positions)
    if pos.shape != (n, 3):
        raise BoltzflowError(f"molecule {name!r}: {pos.shape[0]} positions for {n} particles")
    atoms = list(topology.atoms())
    if len(atoms) != n:
        raise BoltzflowError(f"molecule {name!r}: topology has {len(atoms)} atoms, the System {n} particles")
    bonds = [(a.index, b.index) for a, b in topology.bonds()]
    if not bonds:  # e.g. a PDB without CONECT records built by hand: use the bond force's pairs
        for f in system.getForces():
            if isinstance(f, openmm.HarmonicBondForce):
                bonds = [tuple(f.getBondParameters(i)[:2]) for i in range(f.getNumBonds())]
    bonds = np.asarray(sorted({tuple(sorted(map(int, b))) for b in bonds}), np.int64).reshape(-1, 2)
    residues = {r: i for i, r in enumerate(topology.residues())}
    return MolecularSystem(
        name=name,
        system_xml=openmm.XmlSerializer.serialize(system),
        positions=pos,
        masses=np.asarray([system.getParticleMass(i).value_in_unit(openmm.unit.dalton) for i in range(n)]),
        elements=tuple(a.element.symbol if a.element is not None else "" for a in atoms),
        atom_names=tuple(a.name for a in atoms),
        residue_names=tuple(a.residue.name for a in atoms),
        residue_index=np.asarray([residues[a.residue] for a in atoms], np.int64),
        bonds=bonds,
    )


def load_system(source) -> MolecularSystem:
    """Read a molecule (module docstring lists the accepted sources)."""
    if isinstance(source, MolecularSystem):
        return source
    if isinstance(source, str):
        source = builtin_source(source)
    if not isinstance(source, dict):
        raise BoltzflowError(f"a molecule is a built-in name or a dict, got {type(source).__name__}")
    src = dict(source)
    name = src.pop("name", None)
    kinds = [k for k in ("prmtop", "pdb", "openmmtools") if k in src]
    if len(kinds) != 1:
        raise BoltzflowError(f"a molecule dict needs exactly one of prmtop, pdb, openmmtools; got keys {sorted(src)}")
    kind = kinds[0]
    allowed = {"prmtop": {"prmtop", "inpcrd", "implicit_solvent"}, "pdb": {"pdb", "forcefield", "template"}}.get(kind)
    if allowed is not None and set(src) - allowed:
        raise BoltzflowError(f"molecule from {kind}: unknown keys {sorted(set(src) - allowed)}; "
                             f"valid: {sorted(allowed)}")
    if kind == "prmtop":
        if "inpcrd" not in src:
            raise BoltzflowError("a prmtop molecule needs 'inpcrd' (the coordinates file) too")
        parts = _from_prmtop(src["prmtop"], src["inpcrd"], src.get("implicit_solvent"),
                             name or os.path.splitext(os.path.basename(src["prmtop"]))[0])
    elif kind == "pdb":
        parts = _from_pdb(src["pdb"], src.get("forcefield"), name or os.path.splitext(os.path.basename(src["pdb"]))[0],
                          src.get("template"))
    else:
        cls = src.pop("openmmtools")
        parts = _from_openmmtools(cls, src, name or cls)
    return molecular_system(*parts)


_MINIMA: dict[tuple, np.ndarray] = {}  # (system, start, tolerance, iterations) -> minimum: one minimisation each


def minimize(molecule: MolecularSystem, positions: np.ndarray | None = None, tolerance: float = 1e-3,
             max_iterations: int = 0) -> np.ndarray:
    """The nearest local energy minimum (OpenMM's L-BFGS on the Reference platform, float64), ``(n_atoms, 3)`` nm.

    ``tolerance`` is the RMS force in kJ/mol/nm at which it stops; ``max_iterations = 0`` means until converged.
    The result is kept for the process (every internal-coordinate flow of a molecule starts from its minimum, and
    building one per command -- train, then evaluate -- would minimise again).
    """
    start = np.asarray(molecule.positions if positions is None else positions, np.float64)
    key = (molecule.system_xml, start.tobytes(), float(tolerance), int(max_iterations))
    if key not in _MINIMA:
        _MINIMA[key] = _minimize(molecule, start, tolerance, max_iterations)
    return _MINIMA[key].copy()


def _minimize(molecule: MolecularSystem, start: np.ndarray, tolerance: float, max_iterations: int) -> np.ndarray:
    openmm = _openmm()
    system = molecule.openmm_system()
    integrator = openmm.VerletIntegrator(0.001)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(start)
    openmm.LocalEnergyMinimizer.minimize(context, tolerance, max_iterations)
    out = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer)
    del context
    return np.asarray(out, np.float64)
