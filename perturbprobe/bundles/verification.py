"""Verifying a bundle directory before anything in it is read.

A bundle is trusted only as far as its files are exactly what its manifest lists: the
manifest names every file with its SHA-256 and carries ``manifest_sha256`` over itself. On
load (:func:`verified_manifest`) the format version, the manifest's own hash, the listing
and every file's hash are checked, in that order, before any file is parsed.

Nothing in a bundle is ever unpickled (safetensors, ``.npy`` without pickle, JSON and
LightGBM's text format only), and an extra file, a symbolic link, a special file or a listed
name that is not a plain relative path (``..``, a leading ``/``, a backslash, a hidden
component) is refused. The hashes catch corruption and edits; the listing rules keep a
malicious author's bundle inert too. Version-1 bundles (whose logistic probe was a pickle)
are refused with a message saying how to refit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import BundleError

__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "MANIFEST",
    "manifest_hash",
    "seal_manifest",
    "verified_manifest",
]

# Bump when a reader of the previous version would misread a bundle (renamed files or keys,
# changed meaning). New optional manifest keys do not need a bump.
BUNDLE_FORMAT_VERSION = 2  # 2: no pickle (logistic.joblib → safetensors + JSON), strict listing
MANIFEST = "manifest.json"


def seal_manifest(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` into ``directory``: ``manifest`` plus the format version, the
    SHA-256 of every other file there and ``manifest_sha256``; returns what was written."""
    sealed = {
        **{key: value for key, value in manifest.items() if key != "manifest_sha256"},
        "format_version": BUNDLE_FORMAT_VERSION,
        "files": {
            file.relative_to(directory).as_posix(): _sha256(file)
            for file in sorted(directory.rglob("*"))
            if file.is_file() and file != directory / MANIFEST
        },
    }
    sealed["manifest_sha256"] = manifest_hash(sealed)
    (directory / MANIFEST).write_text(
        json.dumps(sealed, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    return sealed


def verified_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the bundle directory ``path`` once the directory is verified.

    Raises
    ------
    BundleError
        Not a bundle, an unreadable or edited manifest, another format version, files that
        are not exactly the listed ones, or a file whose hash does not match.
    """
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(
            f"{path} is not a probe bundle (no {MANIFEST}); create one with `perturbprobe fit`"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{manifest_path} is unreadable ({exc}); the bundle is corrupt") from exc
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != BUNDLE_FORMAT_VERSION:
        raise BundleError(f"{path}: {_version_advice(version)}")
    if manifest.get("manifest_sha256") != manifest_hash(manifest):
        raise BundleError(
            f"{manifest_path} was edited after the bundle was saved (its hash does not match); "
            "re-create the bundle with `perturbprobe fit`"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{path}: the manifest lists no files; the bundle is corrupt")
    _check_listing(path, files)
    for name, digest in files.items():
        if _sha256(path / name) != digest:
            raise BundleError(
                f"{path}: bundle file {name} is corrupt or was modified (sha256 mismatch); "
                "re-create the bundle with `perturbprobe fit`"
            )
    return manifest


def _version_advice(version: Any) -> str:
    """Why a bundle of format ``version`` cannot be read, and what to do."""
    if version == 1:
        return (
            "bundle format version 1 may hold a pickle (logistic.joblib), which this "
            "perturbprobe never loads (it could run code); fit the probe again: "
            "`perturbprobe fit --features FEATURES_DIR --out BUNDLE_DIR`"
        )
    if isinstance(version, int) and version > BUNDLE_FORMAT_VERSION:
        return (
            f"bundle format version {version}, this perturbprobe reads "
            f"{BUNDLE_FORMAT_VERSION}; upgrade perturbprobe"
        )
    return (
        f"bundle format version {version!r}, this perturbprobe reads "
        f"{BUNDLE_FORMAT_VERSION}; fit the probe again with this version"
    )


_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _check_listing(path: Path, files: dict[str, Any]) -> None:
    """Refuse a bundle directory that is not exactly the manifest plus the files it lists.

    Listed names must be relative POSIX paths of safe components (letters, digits, ``_ . -``,
    not starting with a dot); every entry of the directory tree must be a regular file that
    is listed, or a real directory holding listed files. Nothing is followed through a
    symbolic link.
    """
    listed = set()
    for name in files:
        parts = name.split("/") if isinstance(name, str) else [""]
        if not all(_SAFE_COMPONENT.fullmatch(part) for part in parts):
            raise BundleError(
                f"{path}: the manifest lists an unsafe file name {name!r} (only plain relative "
                "paths inside the bundle are allowed); the bundle is corrupt or malicious"
            )
        listed.add(name)
    parents = {
        "/".join(name.split("/")[:i]) for name in listed for i in range(1, name.count("/") + 1)
    }
    found = set()
    for root, directories, names in os.walk(path):
        here = Path(root).relative_to(path)
        for entry in directories + names:
            relative = (here / entry).as_posix()
            full = Path(root) / entry
            if full.is_symlink():
                raise BundleError(
                    f"{path}: {relative} is a symbolic link; bundles hold regular files only"
                )
            if entry in directories:
                if relative not in parents:
                    raise BundleError(f"{path}: unexpected directory {relative} in the bundle")
            elif relative != MANIFEST:
                if relative not in listed or not full.is_file():
                    raise BundleError(
                        f"{path}: {relative} is not listed in the manifest; a bundle holds "
                        "exactly the files its manifest lists (re-create it with "
                        "`perturbprobe fit`)"
                    )
                found.add(relative)
    missing = sorted(listed - found)
    if missing:
        raise BundleError(f"{path}: bundle file {missing[0]} is missing; the bundle is corrupt")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_hash(manifest: dict[str, Any]) -> str:
    """The ``manifest_sha256`` a manifest must carry: SHA-256 of its other keys, sorted."""
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
