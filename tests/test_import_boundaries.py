"""The layers the README's architecture draws are the layers the code has.

    protos (vap_proto)  <-  libs/* (shared code)  <-  services/* (one process each)  <-  app/ (vap up, CLI)

- a library never imports a service or the app layer;
- a service never imports another service (they talk over NATS, gRPC and the rings) nor the app layer;
- only the app layer (and bench/, tests/) imports services.

Every import counts, wherever it is written: module level, inside a function (deferred), under
TYPE_CHECKING, or as a literal ``importlib.import_module("...")``. The packaging lists (pyproject's package
roots, mypy_path, isort's first-party names) must name every package folder, so nothing escapes the check
by not being installed.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Package:
    name: str  # import name, e.g. vap_tracker
    layer: str  # "proto", "lib", "service" or "app"
    root: Path  # the folder on the package search path


def _packages() -> dict[str, Package]:
    found = {"vap_proto": Package("vap_proto", "proto", REPO / "protos")}
    for pattern, layer in (("libs/*/vap_*", "lib"), ("services/*/vap_*", "service"), ("app/vap_*", "app")):
        for pkg in sorted(REPO.glob(pattern)):
            if (pkg / "__init__.py").is_file():
                found[pkg.name] = Package(pkg.name, layer, pkg.parent)
    return found


PACKAGES = _packages()


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, deferred ones and literal import_module calls included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.append((node.lineno, node.args[0].value))
    return out


def _allowed(importer: Package, imported: Package) -> bool:
    if importer.name == imported.name or imported.layer == "proto":
        return True
    if importer.layer == "proto":
        return False
    if importer.layer == "lib":
        return imported.layer == "lib"
    if importer.layer == "service":
        return imported.layer == "lib"
    return True  # the app layer may use everything


def violations() -> list[str]:
    found: list[str] = []
    for pkg in PACKAGES.values():
        for path in sorted((pkg.root / pkg.name).rglob("*.py")):
            if pkg.layer == "proto" and "/v1/" in path.as_posix():
                continue  # generated code
            for line, module in _imported_modules(path):
                imported = PACKAGES.get(module.split(".")[0])
                if imported is not None and not _allowed(pkg, imported):
                    where = path.relative_to(REPO)
                    found.append(f"{where}:{line}: {pkg.layer} {pkg.name} imports {imported.layer} {module}")
    return found


def test_layers_are_respected() -> None:
    bad = violations()
    assert not bad, "import across the architecture's layers:\n" + "\n".join(bad)


def test_the_check_sees_deferred_and_dynamic_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import os\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from vap_tracker.track import Track\n"
        "def f():\n    from vap_control import service\n    import vap_inference.models as m\n"
        "    return importlib.import_module('vap_decoder.agent')\n"
    )
    modules = [m for _, m in _imported_modules(source)]
    assert {"vap_tracker.track", "vap_control", "vap_inference.models", "vap_decoder.agent"} <= set(modules)
    service, lib = PACKAGES["vap_tracker"], PACKAGES["vap_common"]
    assert not _allowed(lib, service) and not _allowed(service, PACKAGES["vap_control"])
    assert _allowed(PACKAGES["vap_stack"], service) and _allowed(service, lib)


@pytest.mark.parametrize("layer", ["lib", "service", "app"])
def test_every_layer_has_packages(layer: str) -> None:
    assert any(p.layer == layer for p in PACKAGES.values())


def test_packaging_names_every_package_folder() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    roots = {(REPO / r).resolve() for r in pyproject["tool"]["setuptools"]["packages"]["find"]["where"]}
    mypy_path = {(REPO / r).resolve() for r in pyproject["tool"]["mypy"]["mypy_path"].split(":")}
    first_party = set(pyproject["tool"]["ruff"]["lint"]["isort"]["known-first-party"])
    for pkg in PACKAGES.values():
        assert pkg.root.resolve() in roots, f"{pkg.name}: {pkg.root} is not a package root in pyproject"
        assert pkg.root.resolve() in mypy_path, f"{pkg.name}: {pkg.root} is not on mypy_path"
        assert pkg.name in first_party, f"{pkg.name} is not in ruff's known-first-party"
