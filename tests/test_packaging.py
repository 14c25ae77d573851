"""The built wheel carries every subpackage and imports outside the source tree."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_all_subpackages_and_imports(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("dartflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    source_packages = [
        path.parent.relative_to(REPO)
        for top in ("dartflow", "flows", "tasks", "storage")
        for path in (REPO / top).rglob("__init__.py")
    ]
    top_to_package = {"dartflow": "dartflow", "flows": "dartflow/flows", "tasks": "dartflow/tasks", "storage": "dartflow/storage"}
    for package in source_packages:
        parts = package.parts
        installed = "/".join([top_to_package[parts[0]], *parts[1:]]) + "/__init__.py"
        assert installed in names, f"{installed} missing from the wheel: list it in pyproject's packages"
    assert not any(name.startswith(("tasks/", "storage/", "flows/")) for name in names)

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    code = "import dartflow, dartflow.flows.cli, dartflow.storage, dartflow.tasks.models; print(dartflow.__file__)"
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(target))
