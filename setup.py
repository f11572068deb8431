"""What pyproject.toml cannot say: top-level folders that ship inside the package.

migrations/ ships as `infer.migrations`, ui/ (templates, static files) as `infer.ui`,
graphql/ (the SDL and the dashboard's operations) as `infer.graphql`. A wheel (a plain
`pip install .`) then carries them inside the package, where `infer.db.MIGRATIONS_DIR`
and `infer.web` find them; a checkout and an editable install keep using the folders
beside infer/.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["infer", "infer.*"]),
        "infer.migrations",
        "infer.migrations.versions",
        "infer.ui",
        "infer.graphql",
    ],
    package_dir={"infer.migrations": "migrations", "infer.ui": "ui", "infer.graphql": "graphql"},
    package_data={
        "infer.migrations": ["script.py.mako"],
        "infer.ui": ["templates/*.html", "templates/console/*.html", "static/*"],
        "infer.graphql": ["*.graphql", "operations/*.graphql"],
    },
)
