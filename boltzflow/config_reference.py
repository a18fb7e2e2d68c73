"""The settings reference: every section and key a config takes, read from the typed settings, as Markdown.

The documentation site's page docs/how-to/configs.md is generated from :func:`settings_reference` when the site is
built (scripts/mkdocs_hooks.py), so a key added to a settings dataclass (boltzflow.settings) appears there with its
type and default without editing the page. A key's description is the first the code gives of: the comment on its
line in the dataclass, the ``Args:`` entry of the function the dataclass was made from (the flow builders,
boltzflow.settings.from_signature), or a "``key``: ..." phrase of the dataclass's docstring.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import typing

from boltzflow.ais import AISSettings
from boltzflow.config import DEFAULT_FLOW, MODEL_SETTINGS
from boltzflow.explore import ExploreSettings
from boltzflow.mcmc.registry import KERNELS, kernel_settings
from boltzflow.settings import type_name
from boltzflow.targets.registry import list_targets
from boltzflow.train.registry import DEFAULT_METHOD, METHOD_SETTINGS
from boltzflow.train.state import TrainSettings


def settings_reference() -> str:
    """Markdown tables of every config section's keys: type, default and description, and the choices of
    ``flow.type``, ``method.name``, ``ais.kernel`` and ``target``.

    Returns:
        The Markdown text, headed by level-2 sections (``## train`` ...).

    Example:
        >>> "| `batch_size` |" in settings_reference()
        True
    """
    parts = [
        "## target\n\nA preset name, or a mapping `{name: PRESET, **options}` (any mapping also takes `rotation: SEED`), "
        "or `{function: \"module:function\", **kwargs}` for your own target.\n", _targets_table(),
        f"## flow\n\n`flow: {{type: TYPE, ...}}`, default type `{DEFAULT_FLOW}`.\n",
        *(f"### flow type `{name}`\n\n{_table(cls)}" for name, cls in MODEL_SETTINGS.items()),
        f"## method\n\n`method: {{name: NAME, ...}}`, default `{DEFAULT_METHOD}`.\n",
        *(f"### method `{name}`\n\n{_table(cls)}" for name, cls in METHOD_SETTINGS.items()),
        f"## ais\n\nAnnealed importance sampling (FAB's, and `boltzflow evaluate --ais`).\n\n{_table(AISSettings)}",
        "Keys that are not in this table are the kernel's own settings:\n", _kernels_table(),
        f"## train\n\n{_table(TrainSettings)}",
        f"## explore\n\nThe missing-mass check and the exploration behind it.\n\n{_table(ExploreSettings)}",
    ]
    return "\n".join(parts)


def _table(cls) -> str:
    """The keys of a settings dataclass: a Markdown table (nested dataclasses get a row each, as ``outer.inner``)."""
    rows = [f"| `{key}` | {_cell(kind)} | {_cell(default)} | {_cell(text)} |"
            for key, kind, default, text in _rows(cls)]
    if not rows:
        return "No settings.\n"
    return "\n".join(["| key | type | default | description |", "| --- | --- | --- | --- |", *rows]) + "\n"


def _rows(cls, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    notes = _descriptions(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("extra"):
            continue  # further keys passed through (kernel settings): described beside the table
        hint = hints[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and not f.metadata.get("choices"):
            yield from _rows(type(default), f"{prefix}{f.name}.")
            continue
        if "choices" in f.metadata:
            kind = f"{f.metadata['tag']}: one of " + ", ".join(f.metadata["choices"])
            default = "null" if default is None else getattr(default, "name", default)
        else:
            kind = type_name(hint)
        yield f"{prefix}{f.name}", kind, _default(default), notes.get(f.name, "")


def _default(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def _cell(text: str) -> str:
    """One table cell: reST literals and cross-references as Markdown code, on one line."""
    text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m.group(1).rpartition('.')[2]}`", " ".join(str(text).split()))
    return text.replace("``", "`").replace("|", "\\|")


def _descriptions(cls) -> dict[str, str]:
    """key -> description, from the sources in the module docstring (the first found wins)."""
    out = {}
    out.update(_docstring_phrases(inspect.getdoc(cls) or ""))
    source_fn = getattr(cls, "__settings_source__", None)
    if source_fn is not None:
        out.update(_args_section(inspect.getdoc(source_fn) or ""))
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base) and base is not cls:
            out.update({k: v for k, v in _descriptions(base).items() if k not in out})
    out.update(_line_comments(cls))
    return out


def _line_comments(cls) -> dict[str, str]:
    """key -> the comment on its line in the class body (``steps: int = 2000  # outer iterations``)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # a class made at run time (from_signature) has no source of its own
        return {}
    body = ast.parse(source).body[0].body
    line_of = {node.lineno: node.target.id for node in body
               if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
    return {line_of[tok.start[0]]: tok.string.lstrip("#: ").strip()
            for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT and tok.start[0] in line_of}


def _args_section(doc: str) -> dict[str, str]:
    """name -> text of a Google-style ``Args:`` section (continuation lines joined)."""
    out, names, inside = {}, [], False
    for line in doc.splitlines():
        if line.strip() == "Args:":
            inside = True
            continue
        if inside:
            if line and not line.startswith(" "):
                break  # the next section
            m = re.match(r"^    (\w+(?:, \w+)*)(?: \([^)]*\))?: (.*)$", line)
            if m:
                names = m.group(1).split(", ")
                for name in names:
                    out[name] = m.group(2)
            elif names and line.strip():
                for name in names:
                    out[name] += " " + line.strip()
    return out


def _docstring_phrases(doc: str) -> dict[str, str]:
    """name -> text of each "``name``: text" phrase of a docstring, up to the next such phrase or the end of its
    sentence."""
    flat = " ".join(doc.split())
    out = {}
    for m in re.finditer(r"``(\w+)``(?: / ``\w+``)*: (.+?)(?=[.;] ``\w+``(?: / ``\w+``)*:|\. [A-Z]|\.$|$)", flat):
        out.setdefault(m.group(1), m.group(2))
    return out


def _kernels_table() -> str:
    rows = ["| kernel | its settings (defaults) | gradients |", "| --- | --- | --- |"]
    for name, (_, needs_grad, *_rest) in KERNELS.items():
        options = ", ".join(f"`{k}: {v}`" for k, v in kernel_settings(name).items()) or "none"
        rows.append(f"| `{name}` | {options} | {'yes' if needs_grad else 'no'} |")
    return "\n".join(rows) + "\n"


def _targets_table() -> str:
    rows = ["| name | what | options (defaults) |", "| --- | --- | --- |"]
    for info in list_targets():
        params = [p for p in inspect.signature(info.factory).parameters.values()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        options = ", ".join(f"`{p.name}: {_default(p.default).strip('`')}`" if p.default is not p.empty
                            else f"`{p.name}`" for p in params) or "none"
        rows.append(f"| `{info.name}` | {_cell(info.description)} | {_cell(options)} |")
    return "\n".join(rows) + "\n"
