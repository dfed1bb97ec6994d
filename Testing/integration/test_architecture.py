"""The package's layers hold: ``lint-imports`` checks the import-linter contracts of pyproject.toml.

The contracts: the wire (``MedSegReasoning/wire``) imports nothing else of the package and no torch, web framework
or image library; the Slicer glue imports only the wire (and the terminology codes); the engine never imports the
Slicer side; no import cycles inside the wire or the Slicer glue; the engine's layers from the front ends down to
the core types. Running them here puts them in the README's test command.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_import_contracts_are_kept():
    assert LINT_IMPORTS.exists(), "import-linter is part of the test extra: pip install -e '.[test]'"
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


RUFF = Path(sys.executable).with_name("ruff")


def test_code_is_linted_and_formatted_with_the_pinned_ruff():
    """``ruff check`` and ``ruff format --check`` over the whole tree, with the ruff the test extra pins, so style
    and the lint rules of pyproject.toml are part of the README's test command rather than a habit."""
    assert RUFF.exists(), "ruff is part of the test extra: pip install -e '.[test]'"
    for command in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run([str(RUFF), *command], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"ruff {' '.join(command)}:\n" + result.stdout[-6000:] + result.stderr[-2000:]


MYPY = Path(sys.executable).with_name("mypy")


def test_the_package_type_checks():
    """mypy over what pyproject.toml's ``[tool.mypy]`` names (the whole package; strict on the wire, the dialogue and
    the core types): the types the layers rely on are checked, not only documented. One invocation; its cache goes
    to the system's temporary folder (one per checkout), never into the repository, so a rerun takes seconds."""
    assert MYPY.exists(), "mypy is part of the test extra: pip install -e '.[test]'"
    cache = Path(tempfile.gettempdir()) / f"medseg-mypy-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"
    command = [str(MYPY), "--cache-dir", str(cache)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
