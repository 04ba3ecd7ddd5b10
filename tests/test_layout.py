"""The code's shape: imports run one way, and only the packages whose job it is touch MLflow and Hydra."""

from __future__ import annotations

import ast

from .conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "btxrd"
# Lower layers know nothing of higher ones: data <- models <- engine <- cam / metrics <- tasks <- jobs.
LAYERS = {
    "errors": 0,
    "settings": 0,
    "setting_fields": 0,
    "cli": 0,
    "redaction": 0,
    "files": 0,
    "runtime": 1,
    "config": 1,
    "data": 1,
    "models": 2,
    "engine": 3,
    "metrics": 4,
    "cam": 4,
    "tasks": 5,
    "tracking": 5,
    "jobs": 6,
    "report": 7,
    "sweep": 7,
    "entry": 8,
    "bench": 8,
    "predict": 8,
    "export": 9,
}
# no Hydra, no MLflow
PLAIN = (
    "settings",
    "setting_fields",
    "errors",
    "redaction",
    "files",
    "runtime",
    "data",
    "models",
    "engine",
    "metrics",
    "cam",
)


def _imports() -> dict[str, set[str]]:
    """Top-level btxrd package of each module -> the modules it imports (absolute names)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        package = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        names = found.setdefault(package, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    found.pop("__init__", None)
    return found


def test_every_package_has_a_layer() -> None:
    assert set(_imports()) == set(LAYERS)


def test_imports_run_one_way() -> None:
    """No package imports one of a higher layer (same-layer imports are checked for cycles below)."""
    upward = [
        f"{package} -> {name}"
        for package, names in _imports().items()
        for name in names
        if name.startswith("btxrd.") and LAYERS[name.split(".")[1]] > LAYERS[package]
    ]
    assert upward == []


def test_no_cycle_between_packages() -> None:
    graph = {
        package: {n.split(".")[1] for n in names if n.startswith("btxrd.") and n.split(".")[1] != package}
        for package, names in _imports().items()
    }

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in graph[start])

    assert [p for p in graph if reaches(p, p, {p})] == []


def test_only_tracking_talks_to_mlflow_and_the_plain_layers_know_no_hydra() -> None:
    imports = _imports()
    mlflow = sorted(p for p, names in imports.items() if any(n.split(".")[0] == "mlflow" for n in names))
    assert mlflow == ["tracking"]
    hydra = sorted(p for p in PLAIN if any(n.split(".")[0] in ("hydra", "omegaconf") for n in imports[p]))
    assert hydra == []


def test_no_module_outside_the_tasks_tests_a_task_name() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] in ("tasks",):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                constants = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
                if {"classify", "reconstruct"} & set(constants):
                    offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
    assert offenders == []


def test_entry_points_are_thin() -> None:
    for script in ("train.py", "evaluate.py"):
        text = (PROJECT_ROOT / script).read_text()
        assert len(text.splitlines()) < 25 and "hydra_task(" in text, script
