"""mkdocs hooks (mkdocs.yml ``hooks:``): a page's ``<!-- settings-reference -->`` line becomes the settings reference
generated from boltzflow's typed settings (boltzflow.config_reference), when the site is built."""

from boltzflow.config_reference import settings_reference

MARKER = "<!-- settings-reference -->"


def on_page_markdown(markdown: str, **kwargs) -> str:
    return markdown.replace(MARKER, settings_reference()) if MARKER in markdown else markdown
