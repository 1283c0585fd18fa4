"""Results archives (``cnn-course cache export`` / ``import``): a profile's cached results travel
to another machine and replay there without training; a damaged or hostile archive is refused
with a clear message and imports nothing."""
import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import cnnlib
from cnnlib import cache, profile, train
from cnnlib.course import cli, results
from cnnlib.course.results import ResultsArchiveError

ROOT = Path(__file__).resolve().parents[1]


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 10))


@pytest.fixture(scope="module")
def digits():
    return cnnlib.load("digits", device="cpu").subset(train=256, test=64)


def _fit(data, **kw):
    net = _net()
    hist = cnnlib.fit(net, data, epochs=1, lr=0.05, batch_size=64, seed=0, **kw)
    return net, hist


@pytest.fixture
def full_profile(monkeypatch):
    """The full profile on the CPU (what a laptop replaying the GPU box's results runs)."""
    monkeypatch.setattr(profile, "_current", profile._current)  # restored afterwards
    return cnnlib.setup(profile="full", device="cpu", verbose=False)


@pytest.fixture(scope="module")
def archive(digits, tmp_path_factory):
    """A results archive of one full-profile ``fit`` entry, and the folder it was exported from."""
    folder = tmp_path_factory.mktemp("cache-a")
    out = tmp_path_factory.mktemp("archives") / "results.tar"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLIB_CACHE", str(folder))
        mp.setenv("CNNLIB_PROGRESS", "0")
        mp.setattr(profile, "_current", profile._current)
        cnnlib.setup(profile="full", device="cpu", verbose=False)
        _fit(digits)
        results.export_archive(out, profile="full")
    return out, folder


def _members(path):
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def _write(path, members, manifest_fix=None):
    """A tar of ``(name, bytes)`` members; ``manifest_fix(manifest)`` edits MANIFEST.json and
    re-lists the entries' sizes and checksums (the forger who keeps the manifest consistent)."""
    members = list(members)
    if manifest_fix is not None:
        manifest = json.loads(dict(members)["MANIFEST.json"])
        data = dict(members)
        manifest_fix(manifest)
        manifest["entries"] = [dict(item, size=len(data[item["file"]]),
                                    sha256=hashlib.sha256(data[item["file"]]).hexdigest())
                               for item in manifest["entries"] if item["file"] in data]
        members = [("MANIFEST.json", json.dumps(manifest).encode())] + \
                  [(n, b) for n, b in members if n != "MANIFEST.json"]
    with tarfile.open(path, "w") as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return path


def _refused(path, target, match):
    with pytest.raises(ResultsArchiveError, match=match) as err:
        results.import_archive(path, folder=target)
    assert "\n" not in str(err.value)
    assert not target.exists() or not any(target.iterdir()), "a refused import wrote something"
    return str(err.value)


# --------------------------------------------------------------------------------------------
# The promise: exported on one machine, replayed on another without training
# --------------------------------------------------------------------------------------------

def test_an_imported_archive_replays_fit_without_training(archive, digits, full_profile, tmp_path,
                                                          monkeypatch, capsys):
    path, source = archive
    monkeypatch.setenv("CNNLIB_CACHE", str(source))
    monkeypatch.setenv("CNNLIB_PROGRESS", "0")
    trained, first = _fit(digits)                       # from A's cache: the archived weights

    target = tmp_path / "cache-b"
    installed = results.import_archive(path, folder=target)
    assert (installed.entries, installed.new, installed.replaced, installed.unchanged) == (1, 1, 0, 0)
    assert installed.profiles == {"full": 1} and installed.code_version == cache.code_version()
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in source.glob("*.pt"))

    def no_training(*args, **kwargs):
        raise AssertionError("trained instead of loading the imported entry")

    monkeypatch.setattr(train, "_train", no_training)
    monkeypatch.setenv("CNNLIB_CACHE", str(target))
    net, hist = _fit(digits, progress=True)
    assert "loaded from cache (1 epochs" in capsys.readouterr().out
    assert hist.same_metrics(first) and hist.time == first.time
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in net.state_dict().items())
    assert results.import_archive(path, folder=target).unchanged == 1   # importing again: a no-op


def test_fit_entries_do_not_depend_on_the_device(digits, full_profile, tmp_path, monkeypatch, capsys):
    """The key holds amp/channels_last as given (a value equal to the device's default counts
    as the default), not the device; the entry records where it was trained."""
    monkeypatch.setenv("CNNLIB_CACHE", str(tmp_path))
    monkeypatch.setenv("CNNLIB_PROGRESS", "0")
    gpu_box = dataclasses.replace(profile.current(), device=torch.device("cuda"))
    monkeypatch.setattr(profile, "_current", gpu_box)   # provenance as a GPU box writes it
    _fit(digits)
    (entry,) = tmp_path.glob("fit-*.pt")
    meta = torch.load(entry, weights_only=True)["meta"]
    assert (meta["name"], meta["profile"], meta["device"]) == ("fit", "full", "cuda")
    assert meta["code_version"] == cache.code_version()

    monkeypatch.setattr(profile, "_current", dataclasses.replace(gpu_box, device=torch.device("cpu")))
    def no_training(*args, **kwargs):
        raise AssertionError("trained")

    monkeypatch.setattr(train, "_train", no_training)
    _fit(digits, progress=True)
    assert "trained on cuda" in capsys.readouterr().out
    _fit(digits, amp=False, channels_last=True)          # the CPU's defaults, spelled out: a hit
    with pytest.raises(AssertionError, match="trained"):
        _fit(digits, amp=True)                           # bf16 forced on the CPU: another recipe


def test_export_takes_one_profile_of_this_code_version_reproducibly(archive, tmp_path, monkeypatch):
    path, source = archive
    folder = tmp_path / "cache"
    folder.mkdir()
    for f in source.glob("*.pt"):
        (folder / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("CNNLIB_CACHE", str(folder))
    monkeypatch.setattr(profile, "_current", profile._current)
    cnnlib.setup(profile="quick", device="cpu", verbose=False)
    cache.cached("demo", {"a": 1}, lambda: torch.arange(3))             # a quick-profile entry
    old = folder / cache.entry_file("old", repr(2))                     # one from before provenance
    torch.save({"config": repr(2), "value": 5}, old)
    assert cache.cached("old", 2, lambda: pytest.fail("recomputed an old entry")) == 5

    full = results.export_archive(tmp_path / "full.tar", profile="full", folder=folder)
    assert (full.entries, full.profiles) == (1, {"full": 1})
    assert full.skipped == {"profile quick": 1, "no provenance (older cnnlib or unreadable)": 1}
    assert (tmp_path / "full.tar").read_bytes() == path.read_bytes()     # same entries, same bytes
    every = results.export_archive(tmp_path / "all.tar", profile=None, folder=folder)
    assert every.profiles == {"full": 1, "quick": 1}
    names = [n for n, _ in _members(tmp_path / "all.tar")]
    assert names[0] == "MANIFEST.json" and names[1:] == sorted(names[1:])
    with pytest.raises(ResultsArchiveError, match="no cache entries of the medium profile"):
        results.export_archive(tmp_path / "medium.tar", profile="medium", folder=folder)
    assert not (tmp_path / "medium.tar").exists()
    assert any("full" in line and "1 entries" in line for line in results.describe_folder(folder))


def test_import_replaces_a_different_entry_and_keeps_an_identical_one(archive, tmp_path):
    path, _ = archive
    target = tmp_path / "cache"
    results.import_archive(path, folder=target)
    (entry,) = target.glob("*.pt")
    entry.write_bytes(b"a local result for the same key")
    again = results.import_archive(path, folder=target)
    assert (again.new, again.replaced, again.unchanged) == (0, 1, 0)
    assert entry.read_bytes() == dict(_members(path))[entry.name]
    assert not [p for p in target.iterdir() if p.name.startswith(".")]  # no staging left behind


# --------------------------------------------------------------------------------------------
# Refused archives: a clear message, nothing written
# --------------------------------------------------------------------------------------------

def test_a_tampered_member_is_refused(archive, tmp_path):
    path, _ = archive
    raw = bytearray(path.read_bytes())
    with tarfile.open(path) as tar:
        member = [m for m in tar.getmembers() if m.name != "MANIFEST.json"][0]
    raw[member.offset_data + member.size // 2] ^= 0x01
    (tmp_path / "bad.tar").write_bytes(bytes(raw))
    message = _refused(tmp_path / "bad.tar", tmp_path / "cache", "does not match its checksum")
    assert member.name in message and "nothing imported" in message


@pytest.mark.parametrize("where", ["manifest", "entry", "between", "end marker"])
def test_a_truncated_archive_is_refused(archive, tmp_path, where):
    path, _ = archive
    raw = path.read_bytes()
    with tarfile.open(path) as tar:
        manifest, entry = tar.getmembers()
    end = entry.offset_data + -(-entry.size // 512) * 512          # the last member's last block
    cut = {"manifest": manifest.offset_data + 100, "entry": entry.offset_data + entry.size // 2,
           "between": entry.offset, "end marker": end + 512}[where]
    (tmp_path / "cut.tar").write_bytes(raw[:cut])
    target = tmp_path / "cache"
    target.mkdir()                                      # an existing, empty cache stays empty
    _refused(tmp_path / "cut.tar", target, "truncated")
    assert target.is_dir()


def test_an_unlisted_member_is_refused(archive, tmp_path):
    path, _ = archive
    members = _members(path) + [("fit-" + "0" * 20 + ".pt", b"extra")]
    _refused(_write(tmp_path / "extra.tar", members), tmp_path / "cache", "not listed in its MANIFEST")


def test_a_member_outside_the_cache_folder_is_refused(archive, tmp_path):
    path, _ = archive
    members = _members(path)
    evil = [(("../evil.pt" if n != "MANIFEST.json" else n), b) for n, b in members]
    message = _refused(_write(tmp_path / "evil.tar", evil), tmp_path / "sub" / "cache",
                       "not a plain cache entry name")
    assert "'../evil.pt'" in message
    assert not (tmp_path / "sub" / "evil.pt").exists() and not (tmp_path / "sub").exists()


def test_a_link_member_is_refused(archive, tmp_path):
    path, _ = archive
    listed = [n for n, _ in _members(path) if n != "MANIFEST.json"][0]
    bad = tmp_path / "link.tar"
    with tarfile.open(path) as src, tarfile.open(bad, "w") as tar:
        manifest = src.getmember("MANIFEST.json")
        tar.addfile(manifest, src.extractfile(manifest))
        link = tarfile.TarInfo(listed)
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    _refused(bad, tmp_path / "cache", "is a symbolic link, not a regular file")


def test_an_archive_of_another_code_version_is_refused_naming_both(archive, tmp_path):
    path, _ = archive
    bad = _write(tmp_path / "old.tar", _members(path),
                 lambda m: m.update(code_version="0123456789ab", git_commit="abc123"))
    message = _refused(bad, tmp_path / "cache", "code version 0123456789ab")
    assert cache.code_version() in message and "git commit abc123" in message


def test_files_that_are_not_results_archives_are_refused(archive, tmp_path):
    (tmp_path / "notes.tar").write_text("not a tar file at all\n" * 100)
    _refused(tmp_path / "notes.tar", tmp_path / "cache", "not a tar archive")
    members = [(n, b) for n, b in _members(archive[0]) if n != "MANIFEST.json"]
    _refused(_write(tmp_path / "bare.tar", members), tmp_path / "cache", "does not start with MANIFEST.json")
    _refused(tmp_path / "missing.tar", tmp_path / "cache", "no such file")


def test_a_hostile_pickle_is_refused_without_running(archive, tmp_path):
    path, _ = archive
    witness = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(witness), "w"))

    body = io.BytesIO()
    torch.save({"config": "x", "value": Payload(), "meta": {"name": "fit"}}, body)
    members = [(n, body.getvalue() if n != "MANIFEST.json" else b) for n, b in _members(path)]
    _refused(_write(tmp_path / "hostile.tar", members, lambda m: None), tmp_path / "cache",
             r"holds objects other than tensors and plain values \((builtins|io)\.open\).*nothing in it ran")
    assert not witness.exists()


def test_an_entry_under_a_key_its_config_does_not_give_is_refused(archive, tmp_path):
    path, _ = archive
    members = [(n if n == "MANIFEST.json" else "fit-" + "f" * 20 + ".pt", b) for n, b in _members(path)]
    _refused(_write(tmp_path / "moved.tar", members,
                    lambda m: m["entries"][0].update(file="fit-" + "f" * 20 + ".pt")),
             tmp_path / "cache", "key its config does not give")


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------

def test_cli_exports_and_imports(archive, tmp_path, monkeypatch, capsys):
    _, source = archive
    monkeypatch.setenv("CNNLIB_CACHE", str(source))
    out = tmp_path / "X.tar"
    assert cli.main(["cache", "export", "--profile", "full", "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"wrote {out}: 1 entries" in said and "profile full 1" in said and cache.code_version() in said
    assert hashlib.sha256(out.read_bytes()).hexdigest() in said
    monkeypatch.setenv("CNNLIB_CACHE", str(tmp_path / "cache-b"))
    assert cli.main(["cache", "import", str(out)]) == 0
    assert "1 new, 0 replaced, 0 already there" in capsys.readouterr().out
    assert cli.main(["cache", "list"]) == 0 and "full" in capsys.readouterr().out

    bad = tmp_path / "bad.tar"
    bad.write_bytes(out.read_bytes()[:out.stat().st_size // 2])
    monkeypatch.setenv("CNNLIB_CACHE", str(tmp_path / "cache-c"))
    with pytest.raises(SystemExit) as err:
        cli.main(["cache", "import", str(bad)])
    assert str(err.value).startswith("cnn-course cache import: ") and "\n" not in str(err.value)
    assert not (tmp_path / "cache-c").exists()


def test_cli_refuses_a_bad_archive_with_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "results.tar"
    bad.write_bytes(b"\x00garbage" * 1000)
    env = dict(os.environ, CNNLIB_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", "cnnlib.course.cli", "cache", "import", str(bad)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "refused, nothing imported" in done.stderr and not (tmp_path / "cache").exists()
