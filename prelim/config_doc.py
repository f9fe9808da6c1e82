"""The configuration reference, generated from the settings object."""

from __future__ import annotations

from prelim.settings import Settings


def _show(value: object) -> str:
    if value is None or value == "" or value == []:
        return "(empty)"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def settings_table(current: Settings | None = None) -> str:
    """A Markdown table of every ``PRELIM_*`` variable with its default (or current value)."""
    head = "current" if current is not None else "default"
    rows = [f"| variable | {head} | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        if current is not None:
            value = getattr(current, name)
            if name == "secret_key" and value is not None:
                value = "(set)"
        else:
            value = field.get_default(call_default_factory=True)
        rows.append(f"| `PRELIM_{name.upper()}` | `{_show(value)}` | {field.description} |")
    return "\n".join(rows)


BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def readme_with_table(readme: str) -> str:
    """``readme`` with the text between the settings markers replaced by the table."""
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{settings_table()}\n{END}{tail}"
