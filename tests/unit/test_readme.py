"""The README's configuration table names every setting, and only settings."""

from __future__ import annotations

import re
from pathlib import Path

from infer.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
SETTINGS = {f"INFER_{name.upper()}" for name in Settings.model_fields}


def _first_cells() -> list[str]:
    rows = README.read_text().splitlines()
    return [row.split("|")[1] for row in rows if row.startswith("| `INFER_")]


def test_every_setting_is_in_the_readme_table() -> None:
    documented: set[str] = set()
    for cell in _first_cells():
        full = re.findall(r"`(INFER_[A-Z_]+)`", cell)
        documented.update(full)
        # `…_X` after a full name stands for a name sharing a prefix of it.
        for tail in re.findall(r"`…_([A-Z_]+)`", cell):
            parts = full[0].split("_")
            documented.update("_".join([*parts[:k], tail]) for k in range(2, len(parts)))
    assert SETTINGS - documented == set()


def test_the_readme_table_names_no_setting_that_does_not_exist() -> None:
    named = {name for cell in _first_cells() for name in re.findall(r"`(INFER_[A-Z_]+)`", cell)}
    assert named - SETTINGS == set()
