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

BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```\s*$", re.S | re.M)

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
    return BLOCK.findall(page.read_text())


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
    """Every key of every config section is in the generated reference, with its default."""
    import dataclasses

    from boltzflow.config import MODEL_SETTINGS
    from boltzflow.config_reference import settings_reference
    from boltzflow.train.registry import METHOD_SETTINGS

    text = settings_reference()
    classes = [*MODEL_SETTINGS.values(), *METHOD_SETTINGS.values()]
    for cls in classes:
        for f in dataclasses.fields(cls):
            if not f.metadata.get("extra") and not dataclasses.is_dataclass(f.default_factory
                                                                             if callable(f.default_factory) else None):
                assert f"`{f.name}`" in text or f"`blocks.{f.name}`" in text, (cls.__name__, f.name)
    assert "| `lr` | float | `0.0003` |" in text
    assert "| `n_leapfrog: 5` |" in text or "`n_leapfrog: 5`" in text  # the kernels' own settings
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


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page, tmp_path):
    name = str(page.relative_to(ROOT))
    r = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps([name, python_blocks(page)]), cwd=tmp_path,
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 0, f"{name}: a python block failed:\n{r.stderr[-6000:]}"


def test_api_reference_docstrings_pass_pydocstyle():
    """The modules the API reference documents: every public name has a docstring, Google-style sections, every
    argument described (ruff's pydocstyle; the formatting rules aside: summaries here may run over two lines, and
    may start with a symbol)."""
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[docs]')")
    modules = sorted({m for page in (DOCS / "api").glob("*.md") for m in re.findall(r"^::: ([\w.]+)", page.read_text(),
                                                                                      re.M)})
    assert "boltzflow.run" in modules
    paths = [str(ROOT / (m.replace(".", "/") + ".py")) for m in modules]
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "D1,D4", "--ignore", "D105,D107,D403",
                        "--output-format", "concise", *paths], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _env() -> dict:
    """This environment, with the repository importable and mkdocs' end-of-life banner off."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env
