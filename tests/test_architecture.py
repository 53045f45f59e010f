"""The house rules of docs/DESIGN.md section 3, checked on every test run: dependencies run one way (the
import-linter contracts in pyproject.toml), no private names cross modules, imports inside functions only
where documented, size limits, and tests/ mirroring src/. Each checker is also run on a planted violation,
so a checker that silently checks nothing fails here."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "resnetcls"
TESTS = ROOT / "tests"

MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 400
MAX_PARAMETERS = 8  # self/cls not counted; more travel together as one object (a run's state, a plan)

# Imports inside functions are allowed only for what is optional or slow to import, so a command loads only
# what it uses. Third-party modules (by prefix), each with the reason:
LAZY_THIRD_PARTY = {
    "onnx": "read only when a model.onnx is opened",
    "onnxruntime": "only for the onnxruntime backend and the export check",
    "openvino": "only for the openvino backends and the int8 check",
    "uvicorn": "only when `serve` starts a server",
    "tqdm": "only when a progress bar is drawn on a terminal",
    "torch.utils.tensorboard": "slow to import; only with log.tensorboard=true",
    "mlflow": "optional extra resnetcls[mlflow]; only with log.mlflow=true",
    "wandb": "optional extra resnetcls[wandb]; only with log.wandb=true",
    "pyarrow": "optional extra resnetcls[embed]; only for .parquet embeddings",
}
# resnetcls modules: records/figures.py pulls in matplotlib (only when a figure is drawn); cli/commands.py
# and deploy_commands.py import each subcommand's library in its cmd_* function (`resnetcls --help` does not
# load torch).
LAZY_INTERNAL_TARGETS = {"resnetcls.records.figures"}
LAZY_INTERNAL_IMPORTERS = {
    "resnetcls.cli",
    "resnetcls.cli.commands",
    "resnetcls.cli.deploy_commands",
    "resnetcls.cli.parsers",
}

# Modules with nothing to test on their own: package markers and `python -m resnetcls` (tested through cli).
NO_TEST_FILE = {"__init__.py", "__main__.py"}


def lint_imports(src_root: Path) -> subprocess.CompletedProcess:
    """import-linter with this repository's contracts over the resnetcls package under src_root, in a fresh
    interpreter (grimp finds the package through sys.path, which must point at src_root, not the install)."""
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--config", str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo"],
        capture_output=True,
        text=True,
        cwd=src_root,
        env={**os.environ, "PYTHONPATH": str(src_root)},
    )


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.ImportFrom | ast.Import, importer: str, is_package: bool) -> list[str]:
    """Absolute names of what an import statement imports (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if node.level:
        base = base[: len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]


def import_problems(package: Path) -> list[str]:
    """Private names imported from another module, and imports inside functions that are not allowed."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        importer, is_package = module_name(path, package), path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        in_function = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)
            if n is not f
        }
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            where = f"{path.relative_to(package.parent)}:{node.lineno}"
            internal = (
                isinstance(node, ast.ImportFrom)
                and node.level > 0
                or any(t.split(".")[0] == package.name for t in _imported(node, importer, is_package))
            )
            if isinstance(node, ast.ImportFrom) and internal:
                private = [
                    a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
                ]
                if private:
                    problems.append(
                        f"{where}: imports private name(s) {', '.join(private)} from another module"
                    )
            if id(node) not in in_function:
                continue
            for target in _imported(node, importer, is_package):
                if internal:
                    ok = importer in LAZY_INTERNAL_IMPORTERS or any(
                        target == t or target.startswith(t + ".") for t in LAZY_INTERNAL_TARGETS
                    )
                else:
                    ok = any(target == t or target.startswith(t + ".") for t in LAZY_THIRD_PARTY)
                if not ok:
                    problems.append(
                        f"{where}: imports {target} inside a function (move it to the top of the "
                        f"module; lazy imports are only for the documented heavy modules)"
                    )
    return problems


def _parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = node.args
    names = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    return len([a for a in names if a is not None and a.arg not in ("self", "cls")])


def size_problems(package: Path) -> list[str]:
    """Functions over MAX_FUNCTION_LINES lines or MAX_PARAMETERS parameters, files over MAX_FILE_LINES."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(package.parent)
        if len(text.splitlines()) > MAX_FILE_LINES:
            problems.append(f"{rel}: {len(text.splitlines())} lines (limit {MAX_FILE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    problems.append(
                        f"{rel}:{node.lineno}: {node.name} is {lines} lines (limit {MAX_FUNCTION_LINES})"
                    )
                if _parameter_count(node) > MAX_PARAMETERS:
                    problems.append(
                        f"{rel}:{node.lineno}: {node.name} takes {_parameter_count(node)} parameters "
                        f"(limit {MAX_PARAMETERS})"
                    )
    return problems


def _is_config_section(value: ast.expr) -> bool:
    """`cfg.train`, `self.cfg.data`, `config.export`: one section of the config tree."""
    if not isinstance(value, ast.Attribute):
        return False
    base = value.value
    return (isinstance(base, ast.Name) and base.id in ("cfg", "config")) or (
        isinstance(base, ast.Attribute) and base.attr in ("cfg", "config")
    )


def config_name_problems(package: Path) -> list[str]:
    """One-letter names for a config section (`t = cfg.train`, `d: DataConfig`): a name says what it holds."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            pairs = []
            if isinstance(node, ast.arg) and node.annotation is not None:
                annotation = ast.unparse(node.annotation)
                if any(part.strip().endswith("Config") for part in annotation.split("|")):
                    pairs.append((node.arg, annotation))
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    names = target.elts if isinstance(target, ast.Tuple) else [target]
                    values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
                    pairs += [
                        (name.id, ast.unparse(value))
                        for name, value in zip(names, values)
                        if isinstance(name, ast.Name) and _is_config_section(value)
                    ]
            problems += [(str(rel), node.lineno, name, what) for name, what in pairs if len(name) == 1]
    return [f"{rel}:{line}: `{name}` holds {what}" for rel, line, name, what in sorted(problems)]


def ruff(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """ruff (pinned in the test extra) with this repository's settings."""
    command = [sys.executable, "-m", "ruff", *args, "--config", str(ROOT / "pyproject.toml")]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd)


def missing_test_files(package: Path, tests: Path) -> list[str]:
    """Every module package/X/Y.py needs tests/X/test_Y.py (NO_TEST_FILE excepted)."""
    missing = []
    for path in sorted(package.rglob("*.py")):
        if path.name in NO_TEST_FILE:
            continue
        rel = path.relative_to(package)
        expected = tests / rel.parent / f"test_{rel.name}"
        if not expected.is_file():
            missing.append(f"{package.name}/{rel} has no {expected.relative_to(tests.parent)}")
    return missing


def test_import_contracts_hold():
    result = lint_imports(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_linter_reports_planted_violations(tmp_path):
    package = shutil.copytree(SRC, tmp_path / "resnetcls", ignore=shutil.ignore_patterns("__pycache__"))
    with open(package / "engine" / "optim.py", "a") as f:  # the engine reaching downstream
        f.write("\nfrom ..analysis.report import write_report  # noqa\n")
    with open(package / "data" / "geometry.py", "a") as f:  # a cycle (transforms imports geometry), hidden
        f.write("\n\ndef _hidden():\n    from .transforms import BatchTransform  # noqa\n")
    with open(package / "inference" / "predictor.py", "a") as f:  # inference pulling in the training loader
        f.write("\nfrom ..data.loader import build_loader  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert "Contracts: 0 kept, 4 broken." in out, out
    assert "resnetcls.data.geometry -> resnetcls.data.transforms" in out  # found inside the function
    assert "resnetcls.engine.optim -> resnetcls.analysis.report" in out
    assert "resnetcls.inference.predictor -> resnetcls.data.loader" in out


def test_no_private_cross_module_imports_and_no_undocumented_lazy_imports():
    problems = import_problems(SRC)
    assert not problems, "\n".join(problems)


def test_the_import_checks_catch_a_private_name_and_a_hidden_import(tmp_path):
    package = tmp_path / "resnetcls"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "sources.py").write_text("def _scan():\n    return 1\n")
    (package / "data" / "loader.py").write_text(
        "from .sources import _scan\n\n\ndef build():\n    from . import sources\n    import tqdm\n"
        "    import numpy\n    from ..records.figures import plot\n    return sources, tqdm, numpy, plot\n"
    )
    assert import_problems(package) == [
        "resnetcls/data/loader.py:1: imports private name(s) _scan from another module",
        "resnetcls/data/loader.py:5: imports resnetcls.data.sources inside a function "
        "(move it to the top of the module; lazy imports are only for the documented heavy modules)",
        "resnetcls/data/loader.py:7: imports numpy inside a function (move it to the top of the module; "
        "lazy imports are only for the documented heavy modules)",
    ]


def test_no_function_over_60_lines_and_no_file_over_400():
    problems = size_problems(SRC)
    assert not problems, "\n".join(problems)


def test_the_size_check_catches_a_long_function_and_a_long_file(tmp_path):
    package = tmp_path / "resnetcls"
    package.mkdir()
    (package / "short.py").write_text("def f():\n" + "    x = 1\n" * 59)  # exactly 60 lines: fine
    (package / "long.py").write_text("def g():\n" + "    x = 1\n" * 60 + "\n" * 340)
    assert size_problems(package) == [
        "resnetcls/long.py: 401 lines (limit 400)",
        "resnetcls/long.py:1: g is 61 lines (limit 60)",
    ]


def test_the_size_check_catches_a_function_with_too_many_parameters(tmp_path):
    package = tmp_path / "resnetcls"
    package.mkdir()
    (package / "wide.py").write_text(
        "class A:\n    def ok(self, a, b, c, d, e, f, g, h):\n        pass\n\n\n"
        "def wide(a, b, c, d, e, f, g, *, h, **more):\n    pass\n"
    )
    assert size_problems(package) == ["resnetcls/wide.py:6: wide takes 9 parameters (limit 8)"]


def test_no_one_letter_name_for_a_config_section():
    problems = config_name_problems(SRC)
    assert not problems, "\n".join(problems)


def test_the_name_check_catches_one_letter_config_sections(tmp_path):
    package = tmp_path / "resnetcls"
    package.mkdir()
    (package / "names.py").write_text(
        "def f(t: TrainConfig, data: DataConfig, cfg):\n"
        "    d, train = cfg.data, cfg.train\n"
        "    e = self.cfg.export\n"
        "    n = len(cfg.classes)\n"
    )
    assert config_name_problems(package) == [
        "resnetcls/names.py:1: `t` holds TrainConfig",
        "resnetcls/names.py:2: `d` holds cfg.data",
        "resnetcls/names.py:3: `e` holds self.cfg.export",
    ]


def test_src_tests_and_bench_are_formatted_and_lint_clean():
    formatted = ruff("format", "--check", ".")
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr
    linted = ruff("check", "--output-format", "concise", ".")
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_ruff_reports_an_unformatted_file_and_a_lint_error(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "bad.py").write_text("import os\nx = {'a':1}\n")
    formatted = ruff("format", "--check", ".", cwd=tmp_path)
    linted = ruff("check", "--output-format", "concise", ".", cwd=tmp_path)
    assert formatted.returncode == 1 and "src/bad.py" in formatted.stdout
    assert linted.returncode == 1 and "F401" in linted.stdout


def test_every_module_has_its_test_file():
    missing = missing_test_files(SRC, TESTS)
    assert not missing, "\n".join(missing)


def test_the_mirror_check_names_a_module_without_tests(tmp_path):
    package, tests = tmp_path / "src" / "resnetcls", tmp_path / "tests"
    (package / "data").mkdir(parents=True)
    (tests / "data").mkdir(parents=True)
    for name in (
        "__init__.py",
        "__main__.py",
        "cli.py",
        "data/__init__.py",
        "data/loader.py",
        "data/cache.py",
    ):
        (package / name).write_text("")
    (tests / "test_cli.py").write_text("")
    (tests / "data" / "test_cache.py").write_text("")
    assert missing_test_files(package, tests) == ["resnetcls/data/loader.py has no tests/data/test_loader.py"]
