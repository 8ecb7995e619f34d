"""Outputs: the guard against writing into inputs, all-or-nothing writes, resumable folders, and
write errors that name the output."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io import outputs as outputs_module
from nerveseg_cli.io.outputs import Outputs, atomic_write_text
from tests.conftest import run_cli
from tests.hostile import snapshot


def test_guard_refuses_an_input_inside_or_holding_and_through_links(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (tmp_path / "link").symlink_to(data)
    outputs = Outputs(inputs=[data / "train"])
    for path, problem in ((data / "train", "is also an input"),
                          (tmp_path / "link" / "train", "is also an input"),
                          (data / "train" / "audit", "lies inside the input"),
                          (data, "holds the input")):
        with pytest.raises(NervesegError, match=problem):
            outputs.folder(path, overwrite=True)
    with pytest.raises(NervesegError, match="lies inside the input"):
        outputs.file(data / "train" / "x.csv", overwrite=True)
    assert outputs.folder(tmp_path / "audit").name.endswith(".partial")  # a sibling is fine


def test_inputs_found_later_are_checked_against_declared_outputs(tmp_path: Path) -> None:
    with pytest.raises(NervesegError, match="lies inside the input"), Outputs() as outputs:
        outputs.folder(tmp_path / "images" / "out")
        outputs.add_inputs([tmp_path / "images"])
    assert not (tmp_path / "images").exists()  # the parent made for the stage is gone


def test_everything_or_nothing(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "kept.txt").write_text("old")
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError), Outputs() as outputs:
        folder = outputs.folder(tmp_path / "out", overwrite=True)
        file = outputs.file(tmp_path / "deep" / "er" / "f.csv")
        atomic_write_text(folder / "kept.txt", "new")
        atomic_write_text(file, "x")
        raise RuntimeError("the command failed")
    assert snapshot(tmp_path) == before  # nothing new, nothing changed, no hidden stages
    with Outputs() as outputs:
        folder = outputs.folder(tmp_path / "out", overwrite=True)
        atomic_write_text(folder / "kept.txt", "new")
        (folder / "sub").mkdir()
        atomic_write_text(folder / "sub" / "a.txt", "a")
    assert (tmp_path / "out" / "kept.txt").read_text() == "new"
    assert (tmp_path / "out" / "sub" / "a.txt").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_resumable_folder_keeps_what_a_resume_can_use(tmp_path: Path) -> None:
    def has_maps(added: set[str]) -> bool:
        return any(name.endswith(".png") for name in added)

    with pytest.raises(RuntimeError), Outputs() as outputs:
        folder = outputs.resumable_folder(tmp_path / "maps", resumable=has_maps)
        atomic_write_text(folder / "prediction.json", "{}")
        raise RuntimeError
    assert not (tmp_path / "maps").exists()  # nothing resumable: as it was
    with pytest.raises(RuntimeError), Outputs() as outputs:
        folder = outputs.resumable_folder(tmp_path / "maps", resumable=has_maps)
        atomic_write_text(folder / "prediction.json", "{}")
        atomic_write_text(folder / "1.png", "map")
        raise RuntimeError
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["1.png", "prediction.json"]


def test_resuming_removes_the_temporary_files_a_kill_left(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    (maps / "nerve").mkdir(parents=True)
    for rel in ("1.png", ".2.png.abc123.tmp", "nerve/3.png", "nerve/.4.png.x9.tmp", "notes.tmp"):
        (maps / rel).write_text("x")
    with Outputs() as outputs:
        outputs.resumable_folder(maps, resume=True)
    left = sorted(str(p.relative_to(maps)) for p in maps.rglob("*") if p.is_file())
    assert left == ["1.png", "nerve/3.png", "notes.tmp"]  # only hidden atomic-write temps go


def test_a_failed_write_names_the_output_not_the_temporary_file(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    real_replace = os.replace

    def disk_full(source: str, target: str) -> None:
        if ".tmp" in str(source):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(source, target)

    monkeypatch.setattr(outputs_module.os, "replace", disk_full)
    out = tmp_path / "data"
    result = run_cli("synth", out, "--subjects", "1", "--per-subject", "2", "--test", "1",
                     "--size", "32x32")
    assert result.exit_code == 2, result.stderr
    line = result.stderr.strip()
    assert line.startswith(f"error: {out}") and "No space left on device" in line, line
    assert ".tmp" not in line and ".partial" not in line
    assert list(tmp_path.iterdir()) == []


def test_emoji_codes_and_markup_in_paths_are_printed_as_they_are(tmp_path: Path) -> None:
    out = tmp_path / "a:100:b[bold]c"
    result = run_cli("synth", out, "--subjects", "1", "--per-subject", "2", "--test", "0",
                     "--size", "32x32")
    assert result.exit_code == 0, result.stderr
    assert "a:100:b[bold]c" in result.stdout.replace("\n", "").replace(" ", "").replace("│", "")


# --------------------------------------------------------------------------------------------
# links in an output, and commits of several parts (issue 26)


def _links(out: Path, outside: Path) -> None:
    (out / "nerve").mkdir(parents=True)
    (out / "nerve" / "1.png").write_text("old")
    (out / "first.png").symlink_to(out / "nerve" / "1.png")  # a file inside: allowed
    (outside / "data").mkdir(parents=True)


@pytest.mark.parametrize("declare", ["folder", "resumable", "preflight"])
@pytest.mark.parametrize("where, to, problem", [
    ("vessel", "data", "outside the output"),
    ("nerve/2.png", "data/x.png", "outside the output"),  # a file, deeper down
    ("vessel", "out/nerve", "a symbolic link to the folder"),  # inside, but a folder
])
def test_an_output_holding_a_link_out_or_to_a_folder_is_refused_before_any_write(
        tmp_path: Path, declare: str, where: str, to: str, problem: str) -> None:
    out = tmp_path / "out"
    _links(out, tmp_path)
    (out / where).symlink_to(tmp_path / to)
    before = snapshot(tmp_path)
    with pytest.raises(NervesegError, match=problem) as raised:
        if declare == "preflight":
            Outputs.preflight([], folders=[out], overwrite=True)
        with Outputs() as outputs:
            if declare == "folder":
                outputs.folder(out, overwrite=True)
            else:
                outputs.resumable_folder(out, resume=True)
    assert str(raised.value).startswith(f"{out / where}: a symbolic link to ")
    assert snapshot(tmp_path) == before


def test_an_output_that_is_a_link_is_judged_by_the_folder_it_leads_to(tmp_path: Path) -> None:
    real = tmp_path / "disk" / "maps"
    _links(real, tmp_path)
    (tmp_path / "out").symlink_to(real)
    with Outputs() as outputs:
        stage = outputs.folder(tmp_path / "out", overwrite=True)
        assert stage.parent == real.parent  # staged where the renames stay on one disk
        atomic_write_text(stage / "first.png", "new")
    assert not (real / "first.png").is_symlink()  # the link was replaced ...
    assert (real / "first.png").read_text() == "new"
    assert (real / "nerve" / "1.png").read_text() == "old"  # ... not written through
    assert sorted(p.name for p in real.parent.iterdir()) == ["maps"]


def test_a_commit_that_meets_a_file_for_a_folder_moves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "classes.json").write_text("old")
    (out / "a").mkdir()
    (out / "a" / "1.png").write_text("old")
    (out / "b").write_text("a file named like a class")
    before = snapshot(tmp_path)
    with pytest.raises(NervesegError) as raised, Outputs() as outputs:
        summary = outputs.file(tmp_path / "summary.json")
        atomic_write_text(summary, "{}")
        folder = outputs.folder(out, overwrite=True)
        atomic_write_text(folder / "classes.json", "new")
        for name in ("a", "b"):
            (folder / name).mkdir()
            atomic_write_text(folder / name / "1.png", "new")
    assert str(raised.value) == (f"{out / 'b'}: a file is where the output puts a folder; "
                                 "nothing was written (remove it or choose another output)")
    assert snapshot(tmp_path) == before  # summary.json, classes.json, a/1.png: none moved


def test_a_folder_where_a_file_goes_is_refused_not_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "summary.json").mkdir(parents=True)
    (out / "summary.json" / "mine.txt").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(NervesegError, match="a folder is where the output puts a file"), \
            Outputs() as outputs:
        atomic_write_text(outputs.folder(out, overwrite=True) / "summary.json", "{}")
    assert snapshot(tmp_path) == before


def test_a_rename_failing_during_the_commit_undoes_the_ones_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (out / name).write_text("old")
    before = snapshot(tmp_path)
    real_rename = os.rename

    def fails_on_c(source: str, target: str) -> None:
        if Path(target) == out / "c.txt" and Path(source).name == "c.txt":  # the staged one
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_rename(source, target)

    monkeypatch.setattr(outputs_module.os, "rename", fails_on_c)
    with pytest.raises(NervesegError) as raised, Outputs() as outputs:
        folder = outputs.folder(out, overwrite=True)
        for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
            atomic_write_text(folder / name, "new")
    assert str(raised.value).startswith(f"{out / 'c.txt'}: cannot write (")
    assert snapshot(tmp_path) == before  # a.txt and b.txt are back, no stage or backup left


def test_subfolders_are_all_checked_before_any_is_made(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "vessel").write_text("a file")
    (out / "old.txt").write_text("old")
    (out / "link").symlink_to(out / "old.txt")
    for names, bad in ((["nerve", "vessel"], "vessel"), (["nerve", "link"], "link")):
        with pytest.raises(NervesegError, match="a file is where the output puts a folder"), \
                Outputs() as outputs:
            outputs.subfolders(outputs.resumable_folder(out, overwrite=True), names)
        assert not (out / "nerve").exists(), bad
    with Outputs() as outputs:
        made = outputs.subfolders(outputs.resumable_folder(out, overwrite=True), ["nerve"])
    assert made == [out / "nerve"] and made[0].is_dir()
