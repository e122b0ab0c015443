"""The registry of report kinds, and the shape of the report package."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

import edgetrain.report
from edgetrain.errors import EdgeTrainError
from edgetrain.report import KINDS, REPORT_KINDS, ReportKind, detect_kind, kinds, make_report

PACKAGE = Path(edgetrain.report.__file__).parent


def test_kinds_are_registered_in_detection_order() -> None:
    names = [kind.name for kind in REPORT_KINDS]
    assert names == ["run", "sweep", "bench", "sparse-compare", "compare"]
    assert list(KINDS) == names
    assert all(isinstance(kind, ReportKind) and KINDS[kind.name] for kind in REPORT_KINDS)
    assert {kind.out_dir for kind in REPORT_KINDS} == {"report", "comparison"}


def test_a_new_kind_is_one_registry_entry(
    tmp_path: Path, make_run: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[tuple[Path, Path]] = []

    def write(path: Path, out: Path) -> list[str]:
        out.mkdir()
        written.append((path, out))
        return ["page"]

    notes = ReportKind(
        name="notes",
        description="a directory with notes.txt",
        detect=lambda path: (path / "notes.txt").is_file(),
        write=write,
        out_dir="notes-report",
    )
    monkeypatch.setattr(kinds, "REPORT_KINDS", (*kinds.REPORT_KINDS, notes))
    directory = tmp_path / "notes"
    directory.mkdir()
    (directory / "notes.txt").write_text("hello\n", encoding="utf-8")
    assert detect_kind(directory) == "notes"
    assert make_report(directory) == directory / "notes-report"
    assert written == [(directory, directory / "notes-report")]
    assert detect_kind(make_run("run")) == "run"  # the kinds before it still come first


def test_an_unwritable_report_is_an_edgetrain_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write(path: Path, out: Path) -> None:
        raise PermissionError(13, "Permission denied", str(out))

    broken = ReportKind("broken", "anything", lambda path: True, write)
    monkeypatch.setattr(kinds, "REPORT_KINDS", (broken,))
    with pytest.raises(EdgeTrainError, match="cannot write the report"):
        make_report(tmp_path)


def _report_imports(path: Path) -> set[str]:
    """Modules of the report package that ``path`` imports, lazily or not."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "edgetrain.report":
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "edgetrain.report."
        ):
            names.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            names |= {
                alias.name.split(".")[2]
                for alias in node.names
                if alias.name.startswith("edgetrain.report.")
            }
    return {name for name in names if (PACKAGE / f"{name}.py").is_file()} - {path.stem}


def test_the_report_modules_import_one_another_without_cycles() -> None:
    graph = {path.stem: _report_imports(path) for path in PACKAGE.glob("*.py")}
    graph.pop("__init__")
    done: set[str] = set()

    def visit(module: str, trail: tuple[str, ...]) -> None:
        assert module not in trail, "import cycle: " + " -> ".join((*trail, module))
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, (*trail, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())


def test_no_report_module_imports_private_names_of_another() -> None:
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgetrain"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"
