"""Packaging: a wheel installs everything under one ``shelver`` package; an editable install keeps the checkout.

The repository's top-level folders (consumer/, models/, schemas/, training/) import each other absolutely
(``from models import kl``). Installed as they are, they would be top-level packages named ``models`` and
``training`` in site-packages, where other distributions' packages of the same names live. So a wheel puts
them under ``shelver/`` (``shelver.consumer``, ``shelver.models``, ...) and its build rewrites those
absolute imports to match (`NamespacedBuildPy`): nothing else in the code changes. An editable install
(``pip install -e .``, what ``make setup`` does) maps the checkout's folders as they are, so the tests and
``python -m consumer.cli`` run the sources themselves. Metadata and dependencies stay in pyproject.toml.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

TOP = ("consumer", "models", "schemas", "training")
# Data folders are listed as (namespace) packages so their files ship as package data.
# The review console's templates and static files are data folders, listed as packages too: setuptools
# warns that it will stop shipping package data from folders that are not listed.
PACKAGES = ["consumer", "consumer.adapters", "consumer.cli", "consumer.service", "consumer.review",
            "consumer.review.templates", "consumer.review.static", "models", "models.artifacts",
            "models.taxonomies", "schemas", "schemas.history", "training", "training.labels"]
# The committed artifact and taxonomies ship inside the `models` package, so an installed `shelver consume`
# finds them where models.paths says.
PACKAGE_DATA = {
    "*": ["*.avsc", "*.yaml", "*.json", "*.csv"],
    "models.artifacts": ["*/*", "*/*/*"],
    "training.labels": ["*"],
    "consumer.review": ["templates/*.html", "static/*"],
}
NAMESPACE = "shelver"
# `from consumer...` / `from models import ...` at any indentation (lazy imports inside functions too).
ABSOLUTE_IMPORT = re.compile(rf"^(\s*from\s+)({'|'.join(TOP)})(?=[.\s])", re.M)


def namespaced(source: str) -> str:
    """The module's text with its absolute imports of the project's packages moved under ``shelver``."""
    return ABSOLUTE_IMPORT.sub(rf"\1{NAMESPACE}.\2", source)


def wheel_config() -> dict:
    return {
        "packages": [f"{NAMESPACE}.{p}" for p in PACKAGES],
        "package_dir": {f"{NAMESPACE}.{t}": t for t in TOP},
        "package_data": {(k if k == "*" else f"{NAMESPACE}.{k}"): v for k, v in PACKAGE_DATA.items()},
        "entry_points": {"console_scripts": [f"shelver = {NAMESPACE}.consumer.cli:main"]},
    }


def editable_config() -> dict:
    return {"packages": PACKAGES, "package_data": PACKAGE_DATA,
            "entry_points": {"console_scripts": ["shelver = consumer.cli:main"]}}


if __name__ == "__main__":
    from setuptools import setup
    from setuptools.command.build_py import build_py

    class NamespacedBuildPy(build_py):
        """Copies the modules as build_py does, then rewrites their project imports (`namespaced`)."""

        def build_module(self, module, module_file, package):
            outfile, copied = super().build_module(module, module_file, package)
            path = Path(outfile)
            text = path.read_text(encoding="utf-8")
            if (new := namespaced(text)) != text:
                path.write_text(new, encoding="utf-8")
            return outfile, copied

    # PEP 660 editable builds run the `editable_wheel` command; everything else (pip wheel, pip install .,
    # the Docker image) builds the namespaced wheel.
    if "editable_wheel" in sys.argv:
        setup(**editable_config())
    else:
        setup(**wheel_config(), cmdclass={"build_py": NamespacedBuildPy})
