"""Structure metrics of the installed package (issue #22): what a restructuring should move, counted.

    python bench/structure.py                 # this checkout's moelens/
    python bench/structure.py --root OTHER    # another checkout (e.g. a worktree of an older commit)
    python bench/structure.py --smoke         # the static counts only (no import timing), for CI

Counts: modules and modules over 400 lines; functions over 60 lines and over 8 parameters (self/cls
not counted); function-level imports of moelens modules (imports inside a def); and the CPU time of
``import moelens`` over ``import torch, transformers`` (median of 5 fresh interpreters, one thread).
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
from pathlib import Path


def _functions(tree: ast.AST):
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _n_params(fn: ast.FunctionDef) -> int:
    args = fn.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    names = [n for n in names if n not in ("self", "cls")]
    return len(names) + (args.vararg is not None) + (args.kwarg is not None)


def _inner_moelens_imports(fn: ast.FunctionDef) -> int:
    count = 0
    for node in ast.walk(fn):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("moelens")):
            count += 1
        elif isinstance(node, ast.Import) and any(alias.name.startswith("moelens") for alias in node.names):
            count += 1
    return count


def static_counts(package: Path) -> dict[str, int]:
    """Counts over every ``.py`` file under ``package``."""
    counts = dict(modules=0, modules_over_400=0, functions=0, functions_over_60_lines=0, functions_over_8_params=0,
                  function_level_moelens_imports=0)
    for path in sorted(package.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        counts["modules"] += 1
        counts["modules_over_400"] += len(source.splitlines()) > 400
        tree = ast.parse(source)
        for fn in _functions(tree):
            counts["functions"] += 1
            counts["functions_over_60_lines"] += (fn.end_lineno - fn.lineno + 1) > 60
            counts["functions_over_8_params"] += _n_params(fn) > 8
        # imports inside the outermost functions only, so nested defs are not counted twice
        outer = [node for node in ast.walk(tree) if isinstance(node, (ast.ClassDef, ast.Module))]
        for owner in outer:
            for node in owner.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    counts["function_level_moelens_imports"] += _inner_moelens_imports(node)
    return counts


def _import_cpu(root: Path, statement: str) -> float:
    code = f"import time; t = time.process_time(); {statement}; print(time.process_time() - t)"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def import_cost(root: Path, repeats: int = 5) -> dict[str, float]:
    """Median CPU seconds of ``import torch, transformers`` and of that plus ``import moelens``."""
    base = statistics.median(_import_cpu(root, "import torch, transformers") for _ in range(repeats))
    full = statistics.median(_import_cpu(root, "import torch, transformers; import moelens") for _ in range(repeats))
    return {"import torch+transformers (CPU s)": round(base, 3), "import moelens over that (CPU s)": round(full - base, 3)}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="checkout holding moelens/")
    parser.add_argument("--smoke", action="store_true", help="static counts only (no import timing), for CI")
    args = parser.parse_args(argv)
    package = args.root / "moelens"
    if not (package / "__init__.py").is_file():
        parser.error(f"--root {args.root}: no moelens/__init__.py there; pass the folder of a moelens checkout.")
    results: dict[str, float] = dict(static_counts(package))
    if not args.smoke:
        results.update(import_cost(args.root))
    width = max(map(len, results))
    print(f"structure of {package}")
    for name, value in results.items():
        print(f"  {name.ljust(width)}  {value}")
    return results


if __name__ == "__main__":
    main()
