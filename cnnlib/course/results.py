"""Results archives: the result cache of one profile, packed to share with a class.

Run the full profile once on a GPU box (``cnn-course run --profile full``), then

    cnn-course cache export --profile full -o results.tar     # on the GPU box
    cnn-course cache import results.tar                       # on each laptop

and a laptop replays the full-profile lectures (``CNNLIB_PROFILE=full``) from the cache instead
of training: ``fit``'s key does not hold the device (see ``cnnlib.cache`` for which keys do).

The archive is a plain tar: first ``MANIFEST.json``, then the cache entries (``<name>-<key>.pt``)
sorted by name, every member a regular file with a fixed time stamp, owner and mode, so that the
same entries give the same bytes. The manifest holds the format and its version, the cnnlib
``code_version`` (and the git commit it was exported from, where known), the torch version, the
profiles, and per entry its file name, cache name, profile, dataset, device, size and sha256.

``import_archive`` verifies everything before it writes anything: the manifest comes first and
parses; the archive's code version is this checkout's (entries are keyed by it: others would
never be found, so they are refused with both versions named); every member is a regular file
(no links, devices or folders) whose name is a plain entry name (``cnnlib.cache.ENTRY_FILE``: no
path, no ``..``), listed exactly once, of the listed size and sha256; no listed member is
missing; and each loads with ``torch.load(weights_only=True)`` — which refuses pickled objects
other than tensors and plain containers, so a hostile entry cannot run code — into a cache entry
of this code version lying under the key its own config gives. The members are staged in a
hidden folder inside the cache folder and only then renamed into place (``os.replace``, atomic
per file); any problem raises ``ResultsArchiveError`` with a message naming it, and the cache
folder is left as it was. A half-finished import (the machine dies between two renames) leaves
whole entries only.

The checksums catch damage (a truncated download, a flipped byte), not a forger who rewrites the
manifest too: the sha256 of the whole archive, printed by export and import, lets a class
compare it with the one the instructor published.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import cache as _cache

FORMAT = "cnnlib-results"
FORMAT_VERSION = 1
MANIFEST = "MANIFEST.json"
MAX_MANIFEST_BYTES = 16 << 20


class ResultsArchiveError(ValueError):
    """A results archive that cannot be exported or imported; the message (one line) says why."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def _said(err: BaseException) -> str:
    """An exception as ``Type: message`` on one line (tarfile's and torch's span several)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


@dataclass
class Entry:
    """One file in the cache folder and what its ``meta`` says (``None`` where unknown)."""

    path: Path
    size: int
    name: str | None = None
    profile: str | None = None
    data: str | None = None
    device: str | None = None
    code_version: str | None = None
    created: str | None = None


@dataclass
class Summary:
    """What an export wrote or an import installed."""

    archive: Path
    entries: int
    bytes: int
    code_version: str
    profiles: dict[str, int]
    sha256: str
    skipped: dict[str, int] = field(default_factory=dict)   # export: why entries were left out
    new: int = 0                                             # import: entries that were not there
    replaced: int = 0                                        # import: entries overwritten
    unchanged: int = 0                                       # import: identical entries already there
    folder: Path | None = None                               # the cache folder read or written

    def describe(self) -> str:
        profiles = ", ".join(f"{p} {n}" for p, n in sorted(self.profiles.items()))
        return (f"{self.entries} entries, {self.bytes / 1e6:.1f} MB, profile {profiles}, "
                f"code version {self.code_version}")


def default_profile() -> str:
    """The profile export takes without ``--profile``: this machine's automatic choice (``full``
    with CUDA), or ``CNNLIB_PROFILE``."""
    from ..profile import resolve_profile_name

    return resolve_profile_name()


def _folder(folder) -> Path:
    folder = _cache.cache_dir() if folder is None else Path(folder)
    if folder is None:
        raise ResultsArchiveError("caching is switched off (CNNLIB_CACHE=off): there is no cache "
                                  "folder to export from or import into")
    return folder


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def scan(folder=None) -> list[Entry]:
    """The cache entries in ``folder`` (default: ``cache_dir()``), sorted by file name, with their
    provenance (``meta``, read without loading the tensors). A file that does not load is
    listed with everything ``None``."""
    folder = _folder(folder)
    found = []
    for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
        if not (_cache.ENTRY_FILE.match(path.name) and path.is_file() and not path.is_symlink()):
            continue
        entry = Entry(path, path.stat().st_size)
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            meta = raw.get("meta") if isinstance(raw, dict) else None
        except Exception:
            meta = None
        if isinstance(meta, dict):
            for k in ("name", "profile", "data", "device", "code_version", "created"):
                v = meta.get(k)
                setattr(entry, k, str(v) if v is not None else None)
        found.append(entry)
    return found


def _git_commit() -> str | None:
    """The commit of the git checkout cnnlib runs from, if it runs from one (for messages only:
    the code version is what decides)."""
    root = Path(__file__).resolve().parents[2]
    if not ((root / ".git").exists() and (root / "lectures").is_dir()):  # an installed package
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() or None if head.returncode == 0 else None


def export_archive(out, profile: str | None = None, folder=None) -> Summary:
    """Write the cache entries of ``profile`` (``None``: of every profile) computed by this code
    version into the tar ``out`` (atomically). Entries of other code versions can never be
    found again and entries without provenance cannot be attributed; both are left out and
    counted in ``skipped``. No matching entry is an error that lists what the folder holds."""
    folder, out = _folder(folder), Path(out)
    version = _cache.code_version()
    chosen, skipped = [], Counter()
    for e in scan(folder):
        if e.code_version is None:
            skipped["no provenance (older cnnlib or unreadable)"] += 1
        elif e.code_version != version:
            skipped["another code version"] += 1
        elif profile is not None and e.profile != profile:
            skipped[f"profile {e.profile}"] += 1
        else:
            chosen.append(e)
    if not chosen:
        held = ", ".join(f"{n} of {why}" for why, n in sorted(skipped.items())) or "nothing"
        raise ResultsArchiveError(
            f"no cache entries of {'the ' + profile + ' profile' if profile else 'any profile'} "
            f"computed by this code version ({version}) in {folder} (it holds {held}); run the "
            f"lectures in that profile first, e.g. cnn-course run --profile {profile or 'full'}")
    listed = []
    for e in chosen:
        listed.append({"file": e.path.name, "name": e.name, "profile": e.profile, "data": e.data,
                       "device": e.device, "created": e.created, "size": e.size,
                       "sha256": _sha256_file(e.path)})
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "code_version": version,
                "git_commit": _git_commit(), "torch": str(torch.__version__),
                "profiles": sorted({e.profile for e in chosen}), "entries": listed}
    body = json.dumps(manifest, indent=1, sort_keys=True).encode()

    def info(name: str, size: int) -> tarfile.TarInfo:
        t = tarfile.TarInfo(name)
        t.size, t.mtime, t.mode, t.uid, t.gid, t.uname, t.gname = size, 0, 0o644, 0, 0, "", ""
        return t

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(info(MANIFEST, len(body)), io.BytesIO(body))
            for e, item in zip(chosen, listed):
                data = e.path.read_bytes()  # once, so the bytes hashed are the bytes written
                if len(data) != item["size"] or hashlib.sha256(data).hexdigest() != item["sha256"]:
                    raise ResultsArchiveError(f"{e.path} changed while it was being exported "
                                              f"(is a lecture running?); export again")
                tar.addfile(info(e.path.name, len(data)), io.BytesIO(data))
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Summary(out, len(chosen), sum(e.size for e in chosen), version,
                   dict(Counter(e.profile for e in chosen)), _sha256_file(out), dict(skipped),
                   folder=folder)


# --------------------------------------------------------------------------------------------
# Import: verify every byte first, then rename into place
# --------------------------------------------------------------------------------------------

def _kind(m: tarfile.TarInfo) -> str:
    for test, word in ((m.issym, "a symbolic link"), (m.islnk, "a hard link"), (m.isdir, "a folder"),
                       (m.ischr, "a character device"), (m.isblk, "a block device"),
                       (m.isfifo, "a FIFO")):
        if test():
            return word
    return "not a regular file"


def _check_manifest(raw: bytes) -> dict:
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultsArchiveError(f"its {MANIFEST} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ResultsArchiveError(f"its {MANIFEST} is not a cnnlib results manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ResultsArchiveError(f"its format version is {manifest.get('format_version')!r}; this "
                                  f"cnnlib reads version {FORMAT_VERSION}")
    entries = manifest.get("entries")
    if not isinstance(manifest.get("code_version"), str) or not isinstance(entries, list) or not entries:
        raise ResultsArchiveError(f"its {MANIFEST} lacks a code version or lists no entries")
    seen = set()
    for item in entries:
        ok = (isinstance(item, dict) and isinstance(item.get("file"), str)
              and _cache.ENTRY_FILE.match(item["file"]) and isinstance(item.get("size"), int)
              and item["size"] >= 0 and isinstance(item.get("sha256"), str)
              and len(item["sha256"]) == 64 and all(c in "0123456789abcdef" for c in item["sha256"]))
        if not ok:
            raise ResultsArchiveError(f"its {MANIFEST} has a malformed entry: {str(item)[:200]}")
        if item["file"] in seen:
            raise ResultsArchiveError(f"its {MANIFEST} lists {item['file']} twice")
        seen.add(item["file"])
    return manifest


def _check_entry(path: Path, file: str, version: str) -> str:
    """Load a staged entry the safe way and check it is a cache entry filed under its own key;
    return its profile."""
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refuses arbitrary objects: nothing ran
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        raise ResultsArchiveError(
            f"member {file} holds objects other than tensors and plain values"
            f"{' (' + found.group(1) + ')' if found else ''}; torch.load(weights_only=True) refused "
            f"it, nothing in it ran") from None
    except Exception as err:
        raise ResultsArchiveError(f"member {file} does not load as a cache entry ({_said(err)})") from None
    meta = entry.get("meta") if isinstance(entry, dict) else None
    if not (isinstance(entry, dict) and isinstance(entry.get("config"), str) and "value" in entry
            and isinstance(meta, dict) and isinstance(meta.get("name"), str)):
        raise ResultsArchiveError(f"member {file} is not a cnnlib cache entry with provenance")
    if meta.get("code_version") != version:
        raise ResultsArchiveError(f"member {file} was computed by code version "
                                  f"{meta.get('code_version')}, not the archive's {version}")
    if _cache.entry_file(meta["name"], entry["config"], version) != file:
        raise ResultsArchiveError(f"member {file} is stored under a key its config does not give")
    return str(meta.get("profile"))


def import_archive(archive, folder=None) -> Summary:
    """Verify the results archive ``archive`` completely, then install its entries into
    ``folder`` (default: ``cache_dir()``). Returns a ``Summary`` (new, replaced and unchanged
    entries); any problem raises ``ResultsArchiveError`` and writes nothing."""
    archive, folder = Path(archive), _folder(folder)
    version = _cache.code_version()
    if not archive.is_file():
        raise ResultsArchiveError(f"{archive}: no such file" if not archive.exists()
                                  else f"{archive} is not a regular file")
    missing_parents = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".import-"))
    try:
        manifest, staged, profiles = _verify(archive, version, staging)
        installed = Summary(archive, len(staged), sum(i["size"] for i in manifest["entries"]), version,
                            dict(Counter(profiles)), _sha256_file(archive), folder=folder)
        for file, digest in sorted(staged.items()):
            target = folder / file
            if target.is_file() and not target.is_symlink() and _sha256_file(target) == digest:
                installed.unchanged += 1
                continue
            installed.replaced += target.exists()
            installed.new += not target.exists()
            os.replace(staging / file, target)
        return installed
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for p in missing_parents:  # innermost first: the folders this import created, if empty
            try:
                p.rmdir()
            except OSError:
                break
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _verify(archive: Path, version: str, staging: Path):
    """Read ``archive`` member by member into ``staging``, checking everything the module
    docstring lists. Returns (manifest, {file: sha256}, [profile per entry])."""
    try:
        tar = tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ResultsArchiveError(f"{archive} refused, nothing imported: it is not a tar archive "
                                  f"(neither plain nor gzip/bzip2/xz-compressed)") from None
    try:
        with tar:
            return _read_members(tar, archive, version, staging)
    except ResultsArchiveError as err:
        raise ResultsArchiveError(f"{archive} refused, nothing imported: {err}") from None
    except Exception as err:  # tarfile.ReadError, EOFError, zlib.error...: damaged or truncated
        raise ResultsArchiveError(f"{archive} refused, nothing imported: it is truncated or damaged "
                                  f"({_said(err)})") from None


def _read_members(tar: tarfile.TarFile, archive: Path, version: str, staging: Path):
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isreg():
        raise ResultsArchiveError(f"it does not start with {MANIFEST}: not a cnnlib results archive "
                                  f"(made by cnn-course cache export)")
    if first.size > MAX_MANIFEST_BYTES:
        raise ResultsArchiveError(f"its {MANIFEST} is {first.size:,} bytes, more than a manifest holds")
    manifest = _check_manifest(tar.extractfile(first).read())
    if manifest["code_version"] != version:
        commit = f" (git commit {manifest['git_commit']})" if manifest.get("git_commit") else ""
        raise ResultsArchiveError(
            f"it holds results of cnnlib code version {manifest['code_version']}{commit}, but this "
            f"checkout is code version {version}. Cache entries are keyed by the code version, so "
            f"these would never be used: install the same course version as the machine that "
            f"exported them (or export again from this one)")
    listed = {item["file"]: item for item in manifest["entries"]}
    staged, profiles = {}, []
    while (m := tar.next()) is not None:
        if not _cache.ENTRY_FILE.match(m.name):
            raise ResultsArchiveError(f"member {m.name!r} is not a plain cache entry name "
                                      f"(<name>-<20 hex digits>.pt, no folders)")
        if not m.isreg():
            raise ResultsArchiveError(f"member {m.name} is {_kind(m)}, not a regular file")
        if m.name not in listed:
            raise ResultsArchiveError(f"member {m.name} is not listed in its {MANIFEST}")
        if m.name in staged:
            raise ResultsArchiveError(f"member {m.name} appears twice")
        item = listed[m.name]
        if m.size != item["size"]:
            raise ResultsArchiveError(f"member {m.name} is {m.size:,} bytes, its {MANIFEST} says "
                                      f"{item['size']:,}")
        h, target = hashlib.sha256(), staging / m.name
        with tar.extractfile(m) as src, open(target, "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
                dst.write(block)
        if h.hexdigest() != item["sha256"]:
            raise ResultsArchiveError(f"member {m.name} does not match its checksum (sha256 "
                                      f"{h.hexdigest()[:16]}…, listed {item['sha256'][:16]}…): damaged")
        profiles.append(_check_entry(target, m.name, version))
        staged[m.name] = item["sha256"]
    absent = sorted(set(listed) - set(staged))
    if absent:
        raise ResultsArchiveError(f"{len(absent)} listed member(s) are missing, e.g. {absent[0]}: "
                                  f"the archive is truncated")
    tar.fileobj.seek(tar.offset)  # a whole tar ends with two zero blocks after its last member
    marker = tar.fileobj.read(2 * tarfile.BLOCKSIZE)
    if len(marker) < 2 * tarfile.BLOCKSIZE or marker.strip(b"\0"):
        raise ResultsArchiveError("it ends before its end-of-archive marker: the archive is truncated")
    return manifest, staged, profiles


def describe_folder(folder=None) -> list[str]:
    """Lines saying what the cache folder holds: entries and MB per (profile, dataset) of this
    code version, and how many entries are stale or of unknown origin."""
    folder = _folder(folder)
    version = _cache.code_version()
    groups: dict[tuple, list[int]] = {}
    for e in scan(folder):
        group = ((e.profile or "?", e.data or "?") if e.code_version == version
                 else ("(another code version)" if e.code_version else "(no provenance)", ""))
        groups.setdefault(group, []).append(e.size)
    lines = [f"{folder} (this code version: {version})"]
    for (prof, data), sizes in sorted(groups.items()):
        lines.append(f"  {prof:<24} {data:<14} {len(sizes):>5} entries {sum(sizes) / 1e6:>9.1f} MB")
    if len(lines) == 1:
        lines.append("  (empty)")
    return lines
