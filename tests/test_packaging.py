"""One distribution: a plain wheel maps the core and every bundled plugin to top-level packages."""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["flowtap", "flowtap_proxy", "flowtap_interceptor", "flowtap_har", "flowtap_collection",
            "flowtap_cookiejar"]


def test_wheel_contains_every_package_and_entry_point(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=180)
    (wheel,) = tmp_path.glob("flowtap-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names, package
    assert not any(n.startswith(("core/", "plugins/", "tests/")) for n in names)
    assert "flowtap_pytest/__init__.py" in names  # the pytest plugin, apart from the flowtap package
    assert "flowtap/config.example.toml" in names  # what `flowtap init` writes
    assert "flowtap/py.typed" in names  # plugin authors' type checkers read flowtap's annotations
    for extension_file in ["manifest.json", "background.js", "popup.html", "protocol.json"]:
        assert f"flowtap_interceptor/extension/{extension_file}" in names, extension_file
    for name in ["proxy", "interceptor", "har", "collection", "cookiejar"]:
        assert f"{name} = flowtap_{name}" in entry_points
    assert "flowtap = flowtap_pytest" in entry_points and "flowtap = flowtap.cli:main" in entry_points
    assert "Requires-Python: >=3.10" in metadata
    for dependency in ["pluggy", "mitmproxy>=10.1", "attrs", "platformdirs", "tomli", "websockets"]:
        assert f"Requires-Dist: {dependency}" in metadata, dependency


def test_ci_runs_the_oldest_and_the_newest_declared_python():
    pyproject = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'^requires-python = ">=(3\.\d+)"', pyproject, re.M).group(1)
    declared = sorted(re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject),
                      key=lambda v: tuple(map(int, v.split("."))))
    ci = re.search(r"^PYTHONS=\(([^)]*)\)", (ROOT / ".ci" / "run").read_text(), re.M).group(1).split()
    assert declared[0] == floor, "the oldest classifier is not requires-python's floor"
    assert ci == [floor, declared[-1]], ".ci/run must test the oldest and the newest declared Python"


def test_a_test_run_leaves_nothing_in_the_system_temp_dir(tmp_path):
    """conftest.py makes a home for flowtap's dirs (with a CA in it) in the temp dir; the run removes it."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                             str(tmp_path / "base"), str(ROOT / "tests" / "test_proxy.py"),
                             "-k", "test_ca_lives_in_the_data_dir"],
                            capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert [p.name for p in temp.iterdir()] == []
