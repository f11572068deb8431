"""What pyproject.toml cannot say: the top-level migrations/ ships as `infer.migrations`.

A wheel (a plain `pip install .`) then carries the Alembic environment and versions
inside the package, where `infer.db.MIGRATIONS_DIR` finds them; a checkout and an
editable install keep using the folder beside infer/.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["infer", "infer.*"]),
        "infer.migrations",
        "infer.migrations.versions",
    ],
    package_dir={"infer.migrations": "migrations"},
    package_data={"infer.migrations": ["script.py.mako"]},
)
