"""Walking folders: junk, hidden files, excludes, symlinks and loops."""

from __future__ import annotations

import os

import pytest

from clipsearch.errors import BadInputError
from clipsearch.media.scan import normalize_root, scan


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _names(result, root):
    return sorted(os.path.relpath(f.path, root) for f in result.files)


def test_images_found_and_junk_skipped(tmp_path):
    for rel in ["a.jpg", "b.PNG", "sub/c.heic", "sub/deeper/d.webp", "notes.txt", ".hidden.jpg",
                "._a.jpg", ".DS_Store", "Thumbs.db", "@eaDir/a.jpg/SYNOPHOTO_THUMB_XL.jpg",
                ".thumbnails/t.jpg", "#recycle/old.jpg"]:
        _touch(tmp_path / rel)
    result = scan([str(tmp_path)])
    assert _names(result, tmp_path) == ["a.jpg", "b.PNG", "sub/c.heic", "sub/deeper/d.webp"]
    assert result.skipped == []


def test_exclude_globs_match_relative_paths_and_names(tmp_path):
    for rel in ["keep.jpg", "Screenshots/s.png", "trip/raw/r.jpg", "trip/ok.jpg", "x.gif"]:
        _touch(tmp_path / rel)
    result = scan([str(tmp_path)], exclude=["Screenshots", "*/raw/*", "*.gif"])
    assert _names(result, tmp_path) == ["keep.jpg", "trip/ok.jpg"]


@pytest.mark.parametrize("pattern", [
    "*/Screenshots/*",  # the docs' example: a root's own Screenshots/ too
    "Screenshots", "Screenshots/", "Screenshots/*",  # a folder's name, and its path below the root
    "{root}/Screenshots", "{root}/Screenshots/*",  # absolute
])
def test_exclude_patterns_match_as_people_write_them(tmp_path, pattern):
    root = tmp_path / "Photos"
    for rel in ["keep.jpg", "Screenshots/s.png", "Screenshots/old/o.png", "trip/ok.jpg"]:
        _touch(root / rel)
    result = scan([str(root)], exclude=[pattern.format(root=root)])
    assert _names(result, root) == ["keep.jpg", "trip/ok.jpg"], pattern


def test_exclude_patterns_with_a_tilde_and_the_watchers_events(tmp_path, monkeypatch):
    from clipsearch.build.watch import Watcher

    monkeypatch.setenv("HOME", str(tmp_path))
    root = tmp_path / "Photos"
    for rel in ["keep.jpg", "Private/p.jpg"]:
        _touch(root / rel)
    assert _names(scan([str(root)], exclude=["~/Photos/Private"]), root) == ["keep.jpg"]
    watcher = Watcher(None, [str(root)], exclude=["~/Photos/Private", "*/Screenshots/*"])
    assert watcher._excluded(str(root / "Private" / "later.jpg"))
    assert watcher._excluded(str(root / "Screenshots" / "deep" / "s.png"))
    assert not watcher._excluded(str(root / "keep.jpg"))


def test_symlinks_followed_once_and_loops_survived(tmp_path):
    root = tmp_path / "root"
    _touch(root / "a" / "one.jpg")
    outside = _touch(tmp_path / "elsewhere" / "two.jpg")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    (root / "linked_dir").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "same_file.jpg").symlink_to(outside)
    (root / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    result = scan([str(root)])
    names = _names(result, root)
    assert "a/one.jpg" in names
    assert len(names) == 2  # one.jpg once; two.jpg once, via whichever link came first
    assert [os.path.basename(s.path) for s in result.skipped] == ["dangling.jpg"]
    assert "broken symlink" in result.skipped[0].reason


def test_special_files_and_bad_names_are_reported_not_fatal(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "folder.jpg").mkdir()
    _touch(tmp_path / "folder.jpg" / "inside.jpg")
    bad = os.fsencode(str(tmp_path)) + b"/caf\xe9.jpg"
    with open(bad, "wb") as f:
        f.write(b"x")
    result = scan([str(tmp_path)])
    assert _names(result, tmp_path) == ["folder.jpg/inside.jpg"]
    reasons = {os.path.basename(s.path): s.reason for s in result.skipped}
    assert reasons["pipe.jpg"].startswith("not a regular file")
    assert reasons["caf?.jpg"] == "file name is not valid UTF-8; rename the file"


def test_roots_must_be_existing_folders(tmp_path):
    with pytest.raises(BadInputError, match="folder not found"):
        normalize_root(tmp_path / "nope")
    f = _touch(tmp_path / "f.jpg")
    with pytest.raises(BadInputError, match="not a folder"):
        normalize_root(f)
