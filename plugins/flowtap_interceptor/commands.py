"""``flowtap interceptor``: pair the extension with flowtap, find it, zip it."""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

from flowtap.commandline import describe
from flowtap_interceptor import pairing
from flowtap_interceptor.protocol import EXTENSION_DIR, extension_id

#: Never packed: a test's or a user's provisioning file holds a key.
_NEVER_PACKED = {"pairing.json"}


def setup(parser: argparse.ArgumentParser) -> None:
    describe(parser, "The flowtap Interceptor browser extension: where it is, its pairing key, a zip of it. "
                     "Load the folder as an unpacked extension, paste the key into its popup, and add "
                     "[sources.interceptor] to the config (docs/interceptor.md).",
             "flowtap interceptor", "flowtap interceptor pair", "flowtap interceptor extension --zip ext.zip")
    actions = parser.add_subparsers(dest="interceptor_action", metavar="ACTION", parser_class=type(parser))
    pair = actions.add_parser("pair", help="show the pairing key to paste into the extension")
    describe(pair, "Show the key that pairs the extension with this flowtap (created on first use); the "
                   "bridge accepts only an extension that presents it.",
             "flowtap interceptor pair",
             "flowtap interceptor pair --new   # paired extensions need the new key")
    pair.add_argument("--new", action="store_true",
                      help="replace the key with a new one (paired extensions must be given the new key)")
    pair.add_argument("-q", "--quiet", action="store_true", help="print the key alone")
    ext = actions.add_parser("extension", help="print the extension's folder (to load unpacked), or zip it")
    describe(ext, "Print the extension's folder, to load in chrome://extensions with \"Load unpacked\", or "
                  "write it as a zip file.",
             "flowtap interceptor extension", "flowtap interceptor extension --zip flowtap-interceptor.zip")
    ext.add_argument("--zip", metavar="FILE", help="write the extension as a zip file")


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "interceptor_action", None)
    try:
        if action == "pair":
            return _pair(_key_path(args), args.new, args.quiet)
        if action == "extension":
            return _extension(args.zip)
    except pairing.PairingError as exc:
        print(f"flowtap: error: {exc}", file=sys.stderr)
        return 1
    print(f"Extension folder: {EXTENSION_DIR}")
    print(f"Extension ID:     {extension_id()} (the same from any folder)")
    print(f"Pairing key file: {_key_path(args)}")
    print("Run `flowtap interceptor pair` for the key, `flowtap interceptor extension --zip FILE` for a zip.")
    return 0


def _key_path(args: argparse.Namespace) -> Path:
    """The key file the config names (``[sources.interceptor] key_file``), else the default."""
    from flowtap.config import load_config

    raw = load_config(args.config, args.overrides).raw
    configured = raw.get("sources", {}).get("interceptor", {}).get("key_file", "")
    return pairing.key_path(configured if isinstance(configured, str) else "")


def _pair(path: Path, new: bool, quiet: bool) -> int:
    if new:
        key, created = pairing.new_key(), True
        pairing.write_key(path, key)
    else:
        key, created = pairing.ensure_key(path)
    if quiet:
        print(key)
        return 0
    if new:
        print("A new pairing key replaced the old one: a running flowtap closes the connections of")
        print("extensions holding the old one; give them this one.")
    elif created:
        print("Created a pairing key.")
    print(f"Pairing key: {key}")
    print(f"  (stored in {path}, readable by you only)")
    print()
    print("In the browser, click the flowtap extension's icon, paste the key under \"Pairing key\" and")
    print("press Save. The extension connects whenever `flowtap run` runs with [sources.interceptor] in")
    print("its config. Load the extension first if needed: `flowtap interceptor extension` shows its folder.")
    return 0


def _extension(zip_path: str | None) -> int:
    if not (EXTENSION_DIR / "manifest.json").is_file():
        print(f"flowtap: error: {EXTENSION_DIR}: the extension is missing from this installation",
              file=sys.stderr)
        return 1
    if zip_path is None:
        print(EXTENSION_DIR)
        print("Load it in chrome://extensions: switch on Developer mode, click \"Load unpacked\" and choose "
              "this folder.", file=sys.stderr)
        return 0
    try:
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(extension_files()):
                archive.write(file, file.relative_to(EXTENSION_DIR).as_posix())
    except OSError as exc:
        print(f"flowtap: error: {zip_path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"flowtap: wrote the extension to {zip_path}", file=sys.stderr)
    return 0


def extension_files() -> list[Path]:
    """The files that make up the extension (no provisioning file, nothing hidden)."""
    return [
        path for path in EXTENSION_DIR.rglob("*")
        if path.is_file() and path.name not in _NEVER_PACKED
        and not any(part.startswith((".", "__")) for part in path.relative_to(EXTENSION_DIR).parts)
    ]
