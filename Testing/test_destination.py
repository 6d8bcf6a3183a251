"""Publishing a run folder never deletes a folder the run was not told to replace: no-replace
renames (native and the mkdir fallback), --overwrite replacing only the folder found at the
start, and every failure leaving the destination as it was and no temporary folder behind."""

from __future__ import annotations

import errno
import os
import shutil

import pytest

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.runs import destination as dest
from TorchEsegetaLib.runs.destination import (
    check_output_folder,
    publish,
    rename_no_replace,
    save_run,
)


@pytest.fixture(params=["native", "mkdir"])
def rename_kind(request, monkeypatch, tmp_path):
    """Runs a test with the system's no-replace rename and with the mkdir fallback."""
    if request.param == "mkdir":
        monkeypatch.setattr(dest, "_native_rename_no_replace", lambda source, target: False)
    else:
        (tmp_path / ".probe").mkdir()
        native = dest._native_rename_no_replace(tmp_path / ".probe", tmp_path / ".probed")
        (tmp_path / (".probed" if native else ".probe")).rmdir()
        if not native:
            pytest.skip("this system has no no-replace rename (renameat2 / renamex_np)")
    return request.param


def folder(path, **files):
    """A run folder as the tool writes one (its run.json names the tool) with ``files``."""
    path.mkdir(parents=True)
    (path / "run.json").write_text('{"tool": "torchesegeta"}')
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def contents(path):
    return {p.name: p.read_text() for p in path.iterdir() if p.name != "run.json"}


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_a_no_replace_rename_refuses_an_empty_folder_that_posix_rename_would_replace(
    tmp_path, rename_kind
):
    source = folder(tmp_path / "new", result="mine")
    target = tmp_path / "taken"
    target.mkdir()  # empty: os.rename(source, target) would succeed
    with pytest.raises(FileExistsError):
        rename_no_replace(source, target)
    assert contents(source) == {"result": "mine"} and list(target.iterdir()) == []
    rename_no_replace(source, tmp_path / "free")
    assert contents(tmp_path / "free") == {"result": "mine"} and not source.exists()


def test_without_overwrite_a_folder_published_meanwhile_is_kept(tmp_path, rename_kind):
    out = tmp_path / "run"
    claim = check_output_folder(out, overwrite=False)
    folder(out, result="theirs")  # another run published while this one ran

    def write(temporary):
        folder(temporary, result="mine")

    with pytest.raises(UserInputError, match="created by another run while this one ran"):
        save_run(claim, write)
    assert contents(out) == {"result": "theirs"} and leftovers(tmp_path) == []


def test_even_an_empty_folder_made_meanwhile_is_not_replaced(tmp_path, rename_kind):
    out = tmp_path / "run"
    claim = check_output_folder(out, overwrite=False)
    out.mkdir()
    with pytest.raises(UserInputError, match="--overwrite to replace it"):
        save_run(claim, lambda temporary: folder(temporary, result="mine"))
    assert out.is_dir() and list(out.iterdir()) == [] and leftovers(tmp_path) == []


def test_overwrite_replaces_exactly_the_folder_found_at_the_start(tmp_path, rename_kind):
    out = folder(tmp_path / "run", result="old")
    claim = check_output_folder(out, overwrite=True)
    save_run(claim, lambda temporary: folder(temporary, result="new"))
    assert contents(out) == {"result": "new"} and leftovers(tmp_path) == []


def test_overwrite_keeps_a_folder_another_run_put_there_meanwhile(tmp_path, rename_kind):
    out = folder(tmp_path / "run", result="old")
    claim = check_output_folder(out, overwrite=True)
    # another run with --overwrite replaced it in the meantime
    folder(tmp_path / "other", result="theirs")
    os.rename(out, tmp_path / "gone")
    os.rename(tmp_path / "other", out)
    with pytest.raises(UserInputError, match="replaced or changed by another run"):
        save_run(claim, lambda temporary: folder(temporary, result="mine"))
    assert contents(out) == {"result": "theirs"}
    assert leftovers(tmp_path) == []


def test_overwrite_keeps_the_folder_when_another_run_changed_it_meanwhile(tmp_path):
    out = folder(tmp_path / "run", result="old")
    claim = check_output_folder(out, overwrite=True)
    (out / "metrics.csv").write_text("added by an evaluation")
    os.utime(out, ns=(claim.previous[2] + 10**9, claim.previous[2] + 10**9))
    with pytest.raises(UserInputError, match="replaced or changed"):
        save_run(claim, lambda temporary: folder(temporary, result="mine"))
    assert contents(out) == {"result": "old", "metrics.csv": "added by an evaluation"}


def test_overwrite_of_a_folder_removed_meanwhile_publishes(tmp_path, rename_kind):
    out = folder(tmp_path / "run", result="old")
    claim = check_output_folder(out, overwrite=True)
    shutil.rmtree(out)
    save_run(claim, lambda temporary: folder(temporary, result="new"))
    assert contents(out) == {"result": "new"}


def test_a_run_that_takes_the_name_while_this_one_publishes_loses_nothing(tmp_path, monkeypatch):
    out = folder(tmp_path / "run", result="old")
    claim = check_output_folder(out, overwrite=True)
    real = dest.rename_no_replace

    def third_run_first(source, target):
        if source.name.startswith(".run.partial"):
            folder(target, result="third")  # lands between moving the old one aside and ours
        real(source, target)

    monkeypatch.setattr(dest, "rename_no_replace", third_run_first)
    with pytest.raises(UserInputError, match=r"the run it was to replace is kept in .*\.run\.old-"):
        save_run(claim, lambda temporary: folder(temporary, result="mine"))
    assert contents(out) == {"result": "third"}
    (aside,) = leftovers(tmp_path)  # the old run, kept and named in the message
    assert contents(tmp_path / aside) == {"result": "old"}


def test_a_failed_write_leaves_the_old_run_and_no_temporary_folder(tmp_path):
    out = folder(tmp_path / "run", result="old")
    claim = check_output_folder(out, overwrite=True)

    def full_disk(temporary):
        folder(temporary, half="written")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(temporary / "map.nii.gz"))

    with pytest.raises(UserInputError) as error:
        save_run(claim, full_disk)
    assert str(error.value) == (
        f"cannot write the run folder {out}: no space is left on the disk (writing map.nii.gz); "
        "free some space there or choose a place on another disk"
    )
    assert contents(out) == {"result": "old"} and leftovers(tmp_path) == []

    def interrupted(temporary):
        folder(temporary, half="written")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_run(claim, interrupted)
    assert contents(out) == {"result": "old"} and leftovers(tmp_path) == []


def test_publish_errors_other_than_a_taken_name_put_the_old_run_back(tmp_path, monkeypatch):
    out = folder(tmp_path / "run", result="old")
    claim = check_output_folder(out, overwrite=True)
    real = dest.rename_no_replace

    def read_only(source, target):
        if source.name.startswith(".run.partial"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target))
        real(source, target)

    monkeypatch.setattr(dest, "rename_no_replace", read_only)
    with pytest.raises(UserInputError, match="read-only file system"):
        save_run(claim, lambda temporary: folder(temporary, result="new"))
    assert contents(out) == {"result": "old"} and leftovers(tmp_path) == []


def test_the_start_check_probes_the_folder_and_leaves_nothing(tmp_path, monkeypatch):
    check_output_folder(tmp_path / "a" / "b" / "run", overwrite=False)
    assert list(tmp_path.iterdir()) == []  # nothing created, not even the parents
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match="is a file; choose a place in a folder"):
        check_output_folder(tmp_path / "file" / "run", overwrite=False)

    def no_permission(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(dest.os, "mkdir", no_permission)
    with pytest.raises(UserInputError, match=f"permission denied for {tmp_path}; fix its"):
        check_output_folder(tmp_path / "run", overwrite=False)


def test_publish_takes_a_destination_and_save_run_a_plain_path_must_be_free(tmp_path):
    out = folder(tmp_path / "run", result="old")
    with pytest.raises(UserInputError, match="already exists"):
        save_run(out, lambda temporary: folder(temporary, result="new"))
    temporary = folder(tmp_path / ".tmp", result="new")
    publish(temporary, check_output_folder(tmp_path / "fresh", overwrite=False))
    assert contents(tmp_path / "fresh") == {"result": "new"}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("EROFS", "cannot write the run folder R: /d is on a read-only file system; choose"),
        (
            "ENOSPC",
            "cannot write the run folder R: no space is left on the disk (writing /d); free",
        ),
        ("EDQUOT", "cannot write the run folder R: the disk quota is exhausted (writing /d); free"),
        ("EACCES", "cannot write the run folder R: permission denied for /d; fix its permissions"),
        ("EPERM", "cannot write the run folder R: permission denied for /d; fix its permissions"),
    ],
)
def test_each_unwritable_errno_gets_its_reason_and_fix_and_others_stay_errors(name, expected):
    from TorchEsegetaLib.errors import unwritable_error

    if not hasattr(errno, name):
        pytest.skip(f"no {name} on this system")
    code = getattr(errno, name)
    error = OSError(code, os.strerror(code), "/d")
    assert str(unwritable_error(error, "the run folder R")).startswith(expected)
    assert unwritable_error(OSError(errno.EIO, "I/O error", "/d"), "R") is None
    assert unwritable_error(ValueError("not an OSError"), "R") is None
