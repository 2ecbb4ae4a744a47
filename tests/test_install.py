"""`pip install .` gives a package whose every command runs: its declared dependencies cover every module the
package imports, and each command has a console script. (Before: apache-beam and google-crc32c were only in
requirements.txt, so `python -m samtone_tf.encode` failed with an ImportError after a plain install, and `encode`
and `index` had no console scripts.)"""

import ast
import configparser
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import REPOSITORY_ROOT

COMMANDS = {  # console script: the module `python -m` runs
    "samtone-train": "samtone_tf.train", "samtone-evaluate": "samtone_tf.evaluate",
    "samtone-export": "samtone_tf.export", "samtone-data": "samtone_tf.data", "samtone-mine": "samtone_tf.mine",
    "samtone-analyze": "samtone_tf.analyze", "samtone-encode": "samtone_tf.encode",
    "samtone-index": "samtone_tf.index",
}
# Modules the runtime needs that no source file imports by name: Beam writes TFRecords' CRCs with google-crc32c.
INDIRECT = {"google_crc32c"}


def setup_cfg():
    config = configparser.ConfigParser()
    config.read(REPOSITORY_ROOT / "setup.cfg")
    return config


def requirement_name(line):
    return re.split(r"[\s<>=!~;\[]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def declared_closure():
    """The distributions install_requires names, and everything they require in turn (as installed here)."""
    names = [requirement_name(line) for line in setup_cfg()["options"]["install_requires"].splitlines() if line.strip()]
    closure, pending = set(), list(names)
    while pending:
        name = pending.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        pending += [requirement_name(r) for r in requirements if "extra ==" not in r]
    return set(names), closure


def imported_modules():
    """Top-level modules that samtone_tf's source imports (absolute imports)."""
    found = set()
    for path in (REPOSITORY_ROOT / "samtone_tf").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    return found - set(sys.stdlib_module_names) - {"samtone_tf", "__future__"}


def test_every_imported_module_belongs_to_a_declared_dependency():
    declared, closure = declared_closure()
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module in sorted(imported_modules() | INDIRECT):
        owners = {requirement_name(d) for d in distributions.get(module, [])}
        if not owners & closure:
            missing[module] = sorted(owners)
    assert not missing, f"imported but not declared in setup.cfg (nor required by what it declares): {missing}"
    assert {"apache-beam", "google-crc32c"} <= declared


def test_every_command_has_a_console_script():
    scripts = setup_cfg()["options.entry_points"]["console_scripts"]
    entries = dict(line.split(" = ") for line in scripts.strip().splitlines())
    assert set(entries) == set(COMMANDS)
    for script, module in COMMANDS.items():
        target = entries[script].partition(":")[0]
        assert target in (module, f"{module}.__main__"), (script, target)


@pytest.mark.slow
def test_a_plain_non_editable_install_runs_every_command(tmp_path):
    """Installed from the checkout into a fresh virtual environment (not editable), dependencies taken from the
    set installed here (no index: a dependency the installed set does not satisfy fails the install); then
    every console script answers --help, from a directory outside the checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies: this environment's packages, visible to the new one (not its .pth files: not the
    # editable checkout of samtone_tf itself).
    (tmp_path / "venv" / site.split(str(venv) + "/", 1)[1] / "installed-set.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    build = tmp_path / "build"
    environment = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "TMPDIR": str(build)}
    build.mkdir()
    # Built from a copy: a build in the checkout writes build/ and *.egg-info there, under tests running beside it.
    source = tmp_path / "source"
    shutil.copytree(REPOSITORY_ROOT, source, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info",
                                                                           "build", "runs", "tmp"))
    installed = subprocess.run([str(python), "-m", "pip", "install", "--no-build-isolation", "--no-index",
                                str(source)], capture_output=True, text=True, env=environment, timeout=600)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = subprocess.run([str(python), "-c", "import samtone_tf; print(samtone_tf.__file__)"], cwd=outside,
                           capture_output=True, text=True, timeout=300)
    assert where.stdout.strip().startswith(site), where.stdout + where.stderr

    def help_of(command):
        result = subprocess.run([*command, "--help"], cwd=outside, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"})
        return command, result

    commands = [[str(venv / "bin" / script)] for script in COMMANDS]
    with ThreadPoolExecutor(2) as pool:
        for command, result in pool.map(help_of, commands):
            assert result.returncode == 0, (command, result.stderr[-2000:])
            assert "usage:" in result.stdout and "Traceback" not in result.stderr, (command, result.stderr[-2000:])
