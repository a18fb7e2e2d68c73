"""The documentation site: ``mkdocs build --strict`` succeeds, and the Python code blocks of its pages and of the
README run.

Each page's ```python blocks run in order in one fresh namespace, in a fresh Python process whose working directory
is a temporary one (a block may write files); a failure names the page and the block.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# The pages written for the site (docs/benchmarks.md is the benchmarks' own record, and has no Python blocks).
PAGES = [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if p.name != "benchmarks.md")]

# a fenced block whose language is one of those put in {} (python: the examples that run; bash: the commands)
BLOCK = r"^```(?:{})[^\n]*\n(.*?)^```\s*$"

RUNNER = textwrap.dedent("""
    import json, sys, traceback
    page, blocks = json.load(sys.stdin)
    namespace = {"__name__": "__main__"}
    for i, code in enumerate(blocks, 1):
        try:
            exec(compile(code, f"{page} block {i}", "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            print(f"FAILED: {page}, python block {i} of {len(blocks)}", file=sys.stderr)
            sys.exit(1)
""")


def python_blocks(page: Path) -> list[str]:
    """The ```python fenced blocks of a Markdown page, in order."""
    return fenced_blocks(page, "python")


def fenced_blocks(page: Path, languages: str) -> list[str]:
    """The fenced blocks of a Markdown page whose language is one of ``languages`` (``a|b``), in order."""
    return re.findall(BLOCK.format(languages), page.read_text(), re.S | re.M)


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, env=_env())
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    assert (tmp_path / "site" / "getting-started" / "index.html").is_file()
    configs = (tmp_path / "site" / "how-to" / "configs" / "index.html").read_text()
    assert "settings-reference" not in configs and "<code>n_intermediate</code>" in configs  # the hook ran


def test_settings_reference_covers_every_key():
    """Every key of every config section is in the generated reference, with its default (nested sections, an
    SNF's ``blocks``, as ``blocks.key``)."""
    import dataclasses

    from boltzflow.ais import AISSettings
    from boltzflow.config import MODEL_SETTINGS
    from boltzflow.config_reference import settings_reference
    from boltzflow.explore import ExploreSettings
    from boltzflow.train.registry import METHOD_SETTINGS
    from boltzflow.train.state import TrainSettings

    def keys(cls, prefix=""):
        for f in dataclasses.fields(cls):
            if f.metadata.get("extra"):
                continue
            nested = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            if dataclasses.is_dataclass(nested) and "choices" not in f.metadata:
                yield from keys(nested, f"{prefix}{f.name}.")
            else:
                yield prefix + f.name

    text = settings_reference()
    classes = [*MODEL_SETTINGS.values(), *METHOD_SETTINGS.values(), AISSettings, TrainSettings, ExploreSettings]
    found = [key for cls in classes for key in keys(cls)]
    assert "blocks.n_steps" in found and "batch_size" in found
    for key in found:
        assert f"| `{key}` |" in text, key
    assert "| `lr` | float | `0.0003` |" in text
    assert "`n_leapfrog: 5`" in text  # the kernels' own settings
    assert "| `gmm40` |" in text  # the targets


def test_settings_reference_follows_the_code(monkeypatch):
    """A key added to a settings dataclass appears in the reference, with the comment on its line, unedited."""
    import dataclasses

    import boltzflow.config_reference as ref
    from boltzflow.train.state import TrainSettings

    @dataclasses.dataclass(frozen=True)
    class Extended(TrainSettings):
        patience: int = 7  # steps without improvement before stopping

    monkeypatch.setattr(ref, "TrainSettings", Extended)
    assert "| `patience` | int | `7` | steps without improvement before stopping |" in ref.settings_reference()


def test_pages_have_python_blocks():
    """The collector finds the blocks it should (a regex that matches nothing would pass every page)."""
    assert len(python_blocks(DOCS / "getting-started.md")) >= 4
    assert ROOT / "README.md" in SHELL_COMMANDS and DOCS / "getting-started.md" in SHELL_COMMANDS


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page, tmp_path):
    name = str(page.relative_to(ROOT))
    r = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps([name, python_blocks(page)]), cwd=tmp_path,
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 0, f"{name}: a python block failed:\n{r.stderr[-6000:]}"


def shell_commands(page: Path) -> list[list[str]]:
    """The commands of a page's ```bash blocks, split as the shell would (comments and leading ``VAR=value``
    assignments dropped)."""
    import shlex

    out = []
    for block in fenced_blocks(page, "bash|sh|console"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
                words = words[1:]
            if words:
                out.append(words)
    return out


SHELL_COMMANDS = {page: commands for page in PAGES if (commands := shell_commands(page))}


@pytest.mark.parametrize("page", SHELL_COMMANDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_blocks_name_real_commands(page):
    """The ```bash blocks are trainings of minutes to hours, run by hand (their Python equivalents run above): here
    every ``boltzflow`` line parses with the command's own parser, every preset it trains exists, and every script
    a ``bash`` line runs is in the repository."""
    from boltzflow.cli import parser
    from boltzflow.config import presets

    commands, command_parser, names = SHELL_COMMANDS[page], parser(), presets()
    for words in commands:
        if words[0] == "bash":
            assert (ROOT / words[1]).is_file(), f"{page.name}: {' '.join(words)}: no such script"
        elif words[0] == "boltzflow":
            try:
                args = command_parser.parse_args(words[1:])
            except SystemExit:
                pytest.fail(f"{page.name}: `{' '.join(words)}` does not parse")
            if args.command == "train":
                assert args.config in names or (ROOT / args.config).is_file(), f"{' '.join(words)}: no preset"
        else:
            assert words[0] in {"source", "pip", "python"}, f"{page.name}: a command nobody checks: {words[0]}"


def api_modules() -> list[str]:
    """The modules the API reference documents (the ``::: module`` lines of docs/api/*.md)."""
    return sorted({m for page in (DOCS / "api").glob("*.md") for m in re.findall(r"^::: ([\w.]+)", page.read_text(),
                                                                                   re.M)})


@pytest.fixture(scope="module")
def example_names(tmp_path_factory):
    """What the API reference's examples assume exists: ``bf``, ``jax``, ``jnp``, ``np``; ``run``, a small trained
    run of a 2-D double well, also saved as ``runs/demo`` in the working directory; for the molecular examples,
    alanine dipeptide (``target``), MD samples of it (``x``, equal ``log_w``) and its ``cvs`` (phi, psi)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import boltzflow as bf
    from boltzflow.molecules.free_energy import collective_variables
    from boltzflow.molecules.reference import load_reference

    work = tmp_path_factory.mktemp("examples")
    config = bf.load_config("auto", target={"name": "many_well", "dim": 2}, flow={"type": "realnvp", "n_layers": 2,
                                                                                   "hidden": 16},
                            train={"steps": 30, "batch_size": 128})
    run = bf.fit(None, config, key=jax.random.key(0), progress=False)
    run.save(work / "runs" / "demo")
    names = {"bf": bf, "jax": jax, "jnp": jnp, "np": np, "run": run, "work": work}
    if importlib.util.find_spec("openmm") is not None:
        aldp = bf.make_target("aldp_implicit")
        x = load_reference(aldp.reference_path)["x"][:2000]
        names |= {"target": aldp, "x": x, "log_w": np.zeros(len(x)), "cvs": collective_variables(aldp.molecule,
                                                                                                   ["phi", "psi"])}
    return names


@pytest.mark.parametrize("module", api_modules())
def test_api_reference_examples_run(module, example_names, monkeypatch):
    """The ``>>>`` examples of the API reference's docstrings run (doctest: a shown output must match), each with
    the names of :func:`example_names` in the directory that holds ``runs/demo``."""
    import doctest
    import importlib

    if module.startswith("boltzflow.molecules") and "target" not in example_names:
        pytest.skip("OpenMM is not installed")
    monkeypatch.chdir(example_names["work"])
    tests = doctest.DocTestFinder().find(importlib.import_module(module), extraglobs=example_names)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} example(s) of {module} failed (doctest's report above)"


def test_api_reference_docstrings_pass_pydocstyle():
    """The modules the API reference documents: every public name has a docstring, Google-style sections, every
    argument described (ruff's pydocstyle; the formatting rules aside: summaries here may run over two lines, and
    may start with a symbol)."""
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[docs]')")
    modules = api_modules()
    assert "boltzflow.run" in modules
    paths = [str(ROOT / (m.replace(".", "/") + ".py")) for m in modules]
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "D1,D4", "--ignore", "D105,D107,D403",
                        "--output-format", "concise", *paths], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _env() -> dict:
    """This environment (the suite's compile settings included: the examples are sized to compile more than they run),
    with the repository importable and mkdocs' end-of-life banner off."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env
