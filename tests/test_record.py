import json
import re
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from alpr import db
from alpr.dataset import InvalidAnnotations
from alpr.errors import AlprError, UsageError
from alpr.record import RecordOptions, record
from alpr.versioning import DataRepo, VersioningError, pull_dataset

ROOT = Path(__file__).parents[1]


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(url: str, name: str) -> dict[str, int]:
    engine = db.connect(url)
    with engine.connect() as conn:
        version = conn.execute(sa.select(db.dataset_versions).where(db.dataset_versions.c.name == name)).all()
        ids = [v.id for v in version]
        images = conn.execute(sa.select(sa.func.count()).select_from(db.images)
                              .where(db.images.c.dataset_version_id.in_(ids))).scalar()
        sources = conn.execute(sa.select(db.annotation_sources).where(
            db.annotation_sources.c.dataset_version_id.in_(ids))).all()
    return {"versions": len(version), "images": images, "sources": len(sources),
            "tag": sources[0].tag if sources else None}


@pytest.fixture
def cleanup_rows(unique_name):
    urls = []
    yield urls
    for url in urls:
        engine = db.connect(url)
        with engine.begin() as conn:
            ids = [r.id for r in conn.execute(sa.select(db.dataset_versions.c.id).where(
                db.dataset_versions.c.name == unique_name))]
            if ids:
                conn.execute(db.images.delete().where(db.images.c.dataset_version_id.in_(ids)))
                conn.execute(db.annotation_sources.delete().where(
                    db.annotation_sources.c.dataset_version_id.in_(ids)))
                conn.execute(db.dataset_versions.delete().where(db.dataset_versions.c.id.in_(ids)))


def test_record_rerun_is_idempotent_and_conflicts_are_refused(db_url, synth_dir, labelme_copy, tmp_path,
                                                              unique_name, cleanup_rows):
    cleanup_rows.append(db_url)
    workdir = tmp_path / "work"
    options = RecordOptions(synth_dir, workdir, unique_name, "1", db_url=db_url,
                            dvc_remote=str(tmp_path / "remote"))
    first = record(options)
    assert first.created and sum(first.db_rows.values()) == 24
    snapshot = _tree(workdir / "datasets")
    commits = subprocess.run(["git", "rev-list", "--all"], cwd=workdir, capture_output=True, text=True).stdout
    tagged = subprocess.run(["git", "show-ref", "--tags"], cwd=workdir, capture_output=True, text=True).stdout

    again = record(options)
    assert not again.created
    assert _tree(workdir / "datasets") == snapshot
    assert subprocess.run(["git", "rev-list", "--all"], cwd=workdir, capture_output=True, text=True).stdout == commits
    # read after the rerun: no tag added, none moved
    assert subprocess.run(["git", "show-ref", "--tags"], cwd=workdir, capture_output=True, text=True).stdout == tagged
    tags = subprocess.run(["git", "tag"], cwd=workdir, capture_output=True, text=True).stdout.split()
    assert tags == [f"{unique_name}-ann-v1", f"{unique_name}-v1"]
    assert _rows(db_url, unique_name) == {"versions": 1, "images": 24, "sources": 1, "tag": f"{unique_name}-ann-v1"}

    (labelme_copy / "000003.json").unlink()
    with pytest.raises(db.VersionConflict, match="already recorded with other content"):
        record(RecordOptions(labelme_copy, workdir, unique_name, "1", db_url=db_url,
                             dvc_remote=str(tmp_path / "remote")))
    assert _tree(workdir / "datasets") == snapshot
    assert _rows(db_url, unique_name)["images"] == 24

    second = record(RecordOptions(labelme_copy, workdir, unique_name, "2", db_url=db_url,
                                  dvc_remote=str(tmp_path / "remote")))
    assert second.created and sum(second.db_rows.values()) == 23
    assert _rows(db_url, unique_name)["versions"] == 2


def test_an_image_name_ending_in_a_space_is_refused_before_anything_is_written(db_url, synth_dir, tmp_path,
                                                                                unique_name, cleanup_rows):
    """MariaDB compares names padded with spaces: 'b ' was a duplicate key of 'b', met after DVC had tagged the
    version, and so on every retry. (a.jpg and 'a.jpg ' were refused already: both would be recorded as a.json.)"""
    cleanup_rows.append(db_url)
    source, workdir = tmp_path / "src", tmp_path / "work"
    source.mkdir()
    document = json.loads((synth_dir / "000001.json").read_text())
    for image, annotation in (("b", "b.json"), ("b ", "b_space.json")):
        shutil.copy(synth_dir / "000001.jpg", source / image)
        (source / annotation).write_text(json.dumps({**document, "imagePath": image}))
    options = RecordOptions(source, workdir, unique_name, "1", db_url=db_url, dvc=False)
    with pytest.raises(InvalidAnnotations) as error:
        record(options)
    assert [(e.path.name, e.problem) for e in error.value.errors] == [
        ("b_space.json", f"image {source / 'b '} would be recorded as 'b ', which ends in a space; MySQL and MariaDB "
                         "take a name with trailing spaces for the one without: rename it")]
    assert not (workdir / "datasets").exists()
    result = record(replace(options, skip_invalid=True))
    assert result.skipped == [str(source / "b_space.json")] and sum(result.db_rows.values()) == 1
    assert _rows(db_url, unique_name)["images"] == 1


@pytest.mark.parametrize("same_content", [True, False], ids=["same", "other"])
def test_two_records_of_one_version_at_once_record_it_once(unique_name, cleanup_rows, same_content):
    """On MariaDB both may find the version missing; the second insert then meets the first's row."""
    from conftest import MARIADB_URL, mariadb_available

    if not mariadb_available():
        pytest.fail("MariaDB is not running on 127.0.0.1:3306 (root, no password, database test)")
    cleanup_rows.append(MARIADB_URL)
    engine = db.connect(MARIADB_URL)
    rows = [db.ImageRow(f"{i:06d}.jpg", f"{i:064x}", "train", 64, 48, 1) for i in range(3000)]
    start = threading.Barrier(2)

    def record_once(digest: str):
        start.wait()
        try:
            return db.record_version(engine, db.DatasetRow(unique_name, "1", digest, "t", "p", 3000, 0, 0),
                                     db.SourceRow("s", "a", "t", digest, 3000), rows)
        except db.VersionConflict as conflict:
            return conflict

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(record_once, ["a" * 64, ("a" if same_content else "b") * 64]))
    if same_content:
        assert sorted(results) == [False, True]
    else:
        assert sorted(map(type, results), key=str) == sorted([bool, db.VersionConflict], key=str)
    assert _rows(MARIADB_URL, unique_name) == {"versions": 1, "images": 3000, "sources": 1, "tag": "t"}


def test_two_records_writing_one_version_folder_at_once_leave_one_whole_folder(tmp_path):
    from alpr.record import _atomic_folder

    target = tmp_path / "datasets" / "p" / "1"

    def writer(mark: str):
        def write(folder: Path) -> None:
            folder.mkdir(parents=True)
            (folder / "images").write_text(mark)
            if mark == "first":  # the other record starts and finishes meanwhile
                _atomic_folder(target, writer("second"))
            (folder / "manifest.json").write_text(mark)
        return write

    assert _atomic_folder(target, writer("first")) is False  # the second returned True inside it
    assert {p.name: p.read_text() for p in target.iterdir()} == {"images": "second", "manifest.json": "second"}
    assert [p.name for p in target.parent.iterdir()] == ["1"]  # no partial folder left


def test_a_record_whose_version_folder_came_second_with_other_content_is_refused(synth_dir, labelme_copy, tmp_path,
                                                                                  monkeypatch):
    """Two records of one version at once, of other content, both find it missing: the one whose
    folder came second is refused before it writes its annotations beside the other's images."""
    import alpr.record

    workdir = tmp_path / "work"
    write_dataset, write_annotations = alpr.record._write_dataset, alpr.record._write_annotations
    (labelme_copy / "000003.json").unlink()

    def stopped(*args):
        raise RuntimeError("stopped before its annotations")

    def write_while_the_other_records(*args):
        monkeypatch.setattr(alpr.record, "_write_dataset", write_dataset)
        monkeypatch.setattr(alpr.record, "_write_annotations", stopped)
        with pytest.raises(RuntimeError):  # the other's version folder is in place, its annotations not yet
            record(RecordOptions(labelme_copy, workdir, "ds", "1", dvc=False))
        monkeypatch.setattr(alpr.record, "_write_annotations", write_annotations)
        write_dataset(*args)

    monkeypatch.setattr(alpr.record, "_write_dataset", write_while_the_other_records)
    with pytest.raises(db.VersionConflict, match="already holds dataset 'ds' version '1' with other content"):
        record(RecordOptions(synth_dir, workdir, "ds", "1", dvc=False))
    assert not (workdir / "annotations" / "ds" / "1").exists()
    other = record(RecordOptions(labelme_copy, workdir, "ds", "1", dvc=False))  # finishes the version, whole
    assert other.created is False and other.manifest["source"] == str(labelme_copy.resolve())
    assert sorted(p.name for p in (workdir / "annotations" / "ds" / "1").glob("*.json")) == \
        sorted(p.name for p in labelme_copy.glob("*.json"))


def test_conflict_with_the_folder_is_refused_before_the_database(synth_dir, labelme_copy, tmp_path):
    workdir = tmp_path / "work"
    record(RecordOptions(synth_dir, workdir, "ds", "1", dvc=False))
    (labelme_copy / "000003.json").unlink()
    other_db = f"sqlite:///{tmp_path / 'other.db'}"
    with pytest.raises(db.VersionConflict, match="already holds dataset"):
        record(RecordOptions(labelme_copy, workdir, "ds", "1", db_url=other_db, dvc=False))
    assert db.find_version(db.connect(other_db), "ds", "1") is None
    manifest = workdir / "datasets" / "ds" / "1" / "manifest.json"
    manifest.write_text("[]")  # edited by hand: named, left as it is
    with pytest.raises(UsageError, match=f"{manifest}: not a manifest `alpr record` wrote \\(a JSON list"):
        record(RecordOptions(synth_dir, workdir, "ds", "1", db_url=other_db, dvc=False))
    assert manifest.read_text() == "[]"


def test_the_same_files_split_otherwise_are_other_content(synth_dir, tmp_path):
    """A version is its files and its split: recording them again under another split is a conflict."""
    workdir = tmp_path / "work"
    record(RecordOptions(synth_dir, workdir, "ds", "1", dvc=False))
    snapshot = _tree(workdir / "datasets")
    with pytest.raises(db.VersionConflict, match="already recorded with other content"):
        record(RecordOptions(synth_dir, workdir, "ds", "1", fractions=(0.5, 0.25, 0.25), dvc=False))
    assert _tree(workdir / "datasets") == snapshot
    assert record(RecordOptions(synth_dir, workdir, "ds", "2", fractions=(0.5, 0.25, 0.25), dvc=False)).created


def test_dvc_push_then_a_fresh_workdir_pulls_the_same_bytes(synth_dir, tmp_path):
    workdir, remote = tmp_path / "work", tmp_path / "remote"
    result = record(RecordOptions(synth_dir, workdir, "plates", "1", dvc_remote=str(remote)))
    assert any(remote.rglob("*")), "nothing was pushed to the DVC remote"
    shutil.rmtree(workdir / ".dvc" / "cache")  # the bytes must come from the remote

    fresh = tmp_path / "fresh"
    killed = fresh / "datasets" / "plates" / ".1.pull" / "images"  # a pull killed before its cleanup
    killed.mkdir(parents=True)
    (killed / "junk.txt").write_text("half")
    command = [sys.executable, "-m", "alpr.cli", "data", "pull", "--dataset", "plates", "--version", "1",
               "--workdir", "fresh", "--data-repo", "work"]  # relative, as the README gives them
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True)
    assert _tree(fresh / "datasets" / "plates" / "1") == _tree(result.path)
    manifest = json.loads((fresh / "datasets" / "plates" / "1" / "manifest.json").read_text())
    assert manifest["annotations"]["tag"] == "plates-ann-v1"
    assert manifest["annotations"]["path"] == "annotations/plates/1"  # relative to the workdir, which moves

    failed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert failed.returncode == 1 and "already exists" in failed.stderr


def test_a_version_whose_folder_was_removed_records_again_to_the_bytes_tagged(synth_dir, tmp_path):
    workdir = tmp_path / "work"
    options = RecordOptions(synth_dir, workdir, "plates", "1", dvc_remote=str(tmp_path / "remote"))
    record(options)
    head = lambda: subprocess.run(["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True,  # noqa: E731
                                  text=True).stdout
    before = head()
    shutil.rmtree(workdir / "datasets" / "plates" / "1")
    record(options)  # the same manifest, so the same pointer as its tag's
    assert head() == before
    moved = tmp_path / "moved"  # the same images elsewhere: the manifest names its source, so other bytes
    shutil.copytree(synth_dir, moved)
    shutil.rmtree(workdir / "datasets" / "plates" / "1")
    with pytest.raises(VersioningError, match="tag plates-v1 already names other content"):
        record(RecordOptions(moved, workdir, "plates", "1", dvc_remote=str(tmp_path / "remote")))
    assert head() == before  # nothing committed of the refused version
    assert subprocess.run(["git", "status", "--porcelain", "--", "datasets/plates/1.dvc"], cwd=workdir,
                          capture_output=True, text=True).stdout == ""
    assert not (workdir / "datasets" / "plates" / "1").exists()  # what it wrote went: not refused for ever
    record(options)  # from the tagged source, as the error says
    assert head() == before and (workdir / "datasets" / "plates" / "1" / "manifest.json").is_file()


@pytest.mark.parametrize("repository", ["existing", "new"])
def test_records_of_several_versions_at_once_into_one_repository_all_land(synth_dir, tmp_path, repository):
    """They share the git index and DVC's lock: each waits for the other's instead of failing. Into a
    new repository, each finds none and makes one: the later `dvc init` must not fail on the other's."""
    workdir = tmp_path / "work"
    if repository == "existing":
        record(RecordOptions(synth_dir, workdir, "plates", "0", dvc_remote=str(tmp_path / "remote")))
    runs = [subprocess.Popen([sys.executable, "-m", "alpr.cli", "record", "--source", str(synth_dir), "--workdir",
                              str(workdir), "--dataset", "plates", "--version", str(v), "--dvc-remote",
                              str(tmp_path / "remote")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for v in range(1, 5)]
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr[-2000:]
    tags = subprocess.run(["git", "tag"], cwd=workdir, capture_output=True, text=True).stdout.split()
    assert {f"plates-v{v}" for v in range(1, 5)} <= set(tags)
    untracked = subprocess.run(["git", "status", "--porcelain"], cwd=workdir, capture_output=True, text=True).stdout
    assert "datasets/plates" not in untracked, untracked


def _errors_at_once(action, threads: int = 6) -> list[Exception]:
    """Runs ``action`` in several threads at once; what they raised (a thread's exception would vanish)."""
    import threading

    errors = []

    def run():
        try:
            action()
        except Exception as error:  # noqa: BLE001  (collected, to assert on)
            errors.append(error)

    started = [threading.Thread(target=run) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    return errors


def test_git_inits_of_one_new_repository_at_once_all_succeed(tmp_path):
    """Records into a new repository at once each run `git init`: one that met another copying git's
    templates failed on a file the other had just made (a fresh-clone CI run caught it)."""
    from alpr.versioning import git

    for trial in range(5):
        repo = tmp_path / str(trial)
        repo.mkdir()
        assert not _errors_at_once(lambda: git(repo, "init", "-q", "-b", "main"))
        assert (repo / ".git" / "HEAD").is_file()


def test_commits_of_the_same_bytes_at_once_all_succeed(tmp_path):
    """Records into a new repository each commit its initial files: one whose commit came after
    another's of the same bytes met git's "nothing to commit" (a fresh-clone CI run caught it)."""
    from alpr.versioning import DataRepo, git

    for trial in range(5):
        root = tmp_path / str(trial)
        root.mkdir()
        git(root, "init", "-q", "-b", "main")
        (root / "first").write_text("first\n")
        git(root, "add", "first")
        git(root, "commit", "-q", "-m", "first")
        (root / "shared").write_text("the same bytes\n")
        repo = DataRepo(root, str(tmp_path / "remote"), root)
        assert not _errors_at_once(lambda: repo.commit("shared", ["shared"]))
        assert git(root, "log", "--format=%s").split() == ["shared", "first"]


def test_copies_of_an_image_and_empty_splits_are_recorded_with_a_warning(synth_dir, tmp_path):
    source = tmp_path / "copies"
    source.mkdir()
    document = json.loads((synth_dir / "000000.json").read_text())
    for name in ("a", "b", "c"):
        shutil.copyfile(synth_dir / "000000.jpg", source / f"{name}.jpg")
        (source / f"{name}.json").write_text(json.dumps({**document, "imagePath": f"{name}.jpg"}))
    result = record(RecordOptions(source, tmp_path / "work", "copies", "1", dvc=False))
    counts = result.manifest["counts"]
    assert [w for w in result.warnings if "empty" in w] == \
        [f"the {s} split is empty: more images, or other --split fractions" for s in counts if not counts[s]["images"]]
    assert "2 image(s) are copies of another under another name (e.g. a.jpg = b.jpg = c.jpg)" in result.warnings
    assert record(RecordOptions(synth_dir, tmp_path / "work", "plates", "1", dvc=False)).warnings == []


def test_git_urls_and_ssh_addresses_are_not_local_paths():
    from alpr.versioning import is_git_url

    assert all(map(is_git_url, ["https://github.com/o/d.git", "ssh://git@host/o/d.git", "git@github.com:o/d.git"]))
    assert not any(map(is_git_url, ["work", "/srv/data", "../data-repo", "C:/data"]))


def test_pulling_an_unknown_version_fails_clearly(synth_dir, tmp_path):
    workdir = tmp_path / "work"
    record(RecordOptions(synth_dir, workdir, "plates", "1", dvc_remote=str(tmp_path / "remote")))
    with pytest.raises(VersioningError, match=f"^{re.escape(str(workdir))}: no tag plates-v9; that version was not"):
        pull_dataset(str(workdir), "plates", "9", tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "datasets").exists()  # no empty folders left
    with pytest.raises(VersioningError, match="^wrk: no such data repository"):
        pull_dataset("wrk", "plates", "1", tmp_path / "fresh")


@pytest.mark.parametrize("credentials", ["x-access-token:s3cr3t-token", "s3cr3t-token"])
def test_a_git_remotes_token_is_not_in_the_error(tmp_path, credentials):
    """git repeats the remote's URL in its errors, and the command line holds it: a pull from an
    unreachable https remote (nothing listens on port 9 here) names it without the token."""
    with pytest.raises(VersioningError) as caught:
        pull_dataset(f"https://{credentials}@127.0.0.1:9/o/data.git", "plates", "1", tmp_path / "fresh")
    assert "127.0.0.1:9/o/data.git" in str(caught.value) and "***@" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_record_step_prints_a_summary(synth_dir, tmp_path):
    result = subprocess.run([sys.executable, "steps/record.py", "--source", str(synth_dir), "--workdir",
                             str(tmp_path / "w"), "--dataset", "sum", "--version", "1", "--no-push",
                             "--store", (tmp_path / "bucket").as_uri()], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "dataset sum version 1" in result.stdout and "tags: sum-v1" in result.stdout
    assert "tracking sum v1 with git + DVC" in result.stdout and "pushing" not in result.stdout  # --no-push
    assert (tmp_path / "bucket" / "datasets" / "sum" / "1" / "splits.tar.gz").is_file()
    untracked = subprocess.run([sys.executable, "steps/record.py", "--source", str(synth_dir), "--workdir",
                                str(tmp_path / "u"), "--dataset", "sum", "--version", "1", "--no-dvc"],
                               capture_output=True, text=True, cwd=ROOT)
    assert untracked.returncode == 0 and "tags:" not in untracked.stdout and "--no-dvc" in untracked.stdout


def test_the_summary_names_the_files_this_run_skipped(labelme_copy, tmp_path):
    """invalid.json lists those of the run that wrote the version: a rerun's are named in its summary."""
    def record_step() -> str:
        result = subprocess.run([sys.executable, "steps/record.py", "--source", str(labelme_copy), "--workdir",
                                 str(tmp_path / "w"), "--dataset", "skip", "--version", "1", "--no-dvc",
                                 "--skip-invalid"], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        return result.stdout

    (labelme_copy / "zzz.json").write_text("{")
    assert f"skipped 1 invalid file(s): see {tmp_path / 'w' / 'datasets' / 'skip' / '1' / 'invalid.json'}" in \
        record_step()
    (labelme_copy / "yyy.json").write_text("{")
    rerun = record_step()
    assert "(already recorded, unchanged)" in rerun
    assert f"skipped 2 invalid file(s): {labelme_copy / 'yyy.json'}, {labelme_copy / 'zzz.json'}" in rerun


def test_the_uploaded_splits_are_the_recorded_files_and_the_same_bytes_each_time(synth_dir, tmp_path):
    import io
    import tarfile
    import time

    uploads = []
    for name in ("a", "b"):
        bucket = tmp_path / f"bucket-{name}"
        record(RecordOptions(synth_dir, tmp_path / name, "ds", "1", dvc=False, store=bucket.as_uri()))
        uploads.append(_tree(bucket))
        time.sleep(1.1)  # a later second: file times differ
    assert uploads[0] == uploads[1]
    folder = tmp_path / "a" / "datasets" / "ds" / "1"
    with tarfile.open(fileobj=io.BytesIO(uploads[0]["datasets/ds/1/splits.tar.gz"])) as archive:
        assert {m.name: archive.extractfile(m).read() for m in archive.getmembers()} == \
            {n: (folder / n).read_bytes() for n in ("train.json", "val.json", "test.json", "manifest.json")}
    assert uploads[0]["datasets/ds/1/manifest.json"] == (folder / "manifest.json").read_bytes()


def test_a_bad_split_is_refused_with_what_is_expected(tmp_path):
    result = subprocess.run([sys.executable, "steps/record.py", "--source", str(tmp_path), "--dataset", "d",
                             "--version", "1", "--split", "0.7,0.2"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert "argument --split: '0.7,0.2': expected three non-negative fractions train,val,test" in result.stderr


def _git(repo: Path, *args: str) -> list[str]:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.split()


def test_a_data_repository_above_the_workdir_versions_only_the_datasets(synth_dir, tmp_path):
    repo = tmp_path / "repo"
    record(RecordOptions(synth_dir, repo / "work", "plates", "1", data_repo=repo, push=False))
    assert _git(repo, "tag") == ["plates-ann-v1", "plates-v1"]
    (repo / "work" / "runs").mkdir()
    (repo / "work" / "runs" / "log.json").write_text("{}")
    (repo / "scratch.txt").write_text("")
    assert _git(repo, "status", "--porcelain") == []  # runs and scratch stay out of git
    tracked = _git(repo, "ls-files")
    assert "work/datasets/plates/1.dvc" in tracked and "work/annotations/plates/1.dvc" in tracked


def test_a_version_recorded_in_a_repository_above_the_workdir_pulls_back(synth_dir, tmp_path):
    repo = tmp_path / "repo"
    result = record(RecordOptions(synth_dir, repo / "work", "plates", "1", data_repo=repo,
                                  dvc_remote=str(tmp_path / "remote")))
    shutil.rmtree(repo / ".dvc" / "cache")  # the bytes must come from the remote
    pulled = pull_dataset(str(repo), "plates", "1", tmp_path / "fresh")
    assert pulled == tmp_path / "fresh" / "datasets" / "plates" / "1"
    assert _tree(pulled) == _tree(result.path)


def test_record_commits_only_its_own_files_in_a_shared_repository(synth_dir, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    (project / "notes.txt").write_text("the user's work, staged\n")
    subprocess.run(["git", "add", "notes.txt"], cwd=project, check=True)
    record(RecordOptions(synth_dir, project / "work", "plates", "1", data_repo=project, push=False))
    assert _git(project, "tag") == ["plates-ann-v1", "plates-v1"]
    assert "notes.txt" not in _git(project, "log", "--name-only", "--format=")
    assert _git(project, "diff", "--cached", "--name-only") == ["notes.txt"]
    assert not (project / ".gitignore").exists()  # the user's repository keeps its own ignores


def test_a_repository_of_yours_with_its_own_settings_records_and_pushes_to_the_remote_given(synth_dir, tmp_path):
    """Signed tags (git opened an editor for the tag's message), a commit hook that refuses and a personal
    default DVC remote (dvc push went there, not to --dvc-remote): each failed the record, or lost its push."""
    project, remote, mine = tmp_path / "project", tmp_path / "remote", tmp_path / "mine"
    project.mkdir()
    for command in (["git", "init", "-q"], ["git", "config", "tag.gpgSign", "true"],
                    [sys.executable, "-m", "dvc", "init", "-q"],
                    [sys.executable, "-m", "dvc", "remote", "add", "--local", "-d", "mine", str(mine)]):
        subprocess.run(command, cwd=project, check=True, capture_output=True)
    hook = project / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho refused by the user's hook >&2\nexit 1\n")
    hook.chmod(0o755)
    record(RecordOptions(synth_dir, project / "work", "plates", "1", data_repo=project, dvc_remote=str(remote)))
    assert _git(project, "tag") == ["plates-ann-v1", "plates-v1"]
    assert any(p.is_file() for p in remote.rglob("*")) and not mine.exists()


def test_a_repository_of_yours_that_ignores_the_workdir_is_refused_before_anything_is_written(synth_dir, tmp_path):
    """DVC would refuse to track the version's folders, after record had written them and committed
    its own setup into your repository."""
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    (project / ".gitignore").write_text("work/\n")
    with pytest.raises(VersioningError, match=r"work/datasets/plates/1.dvc: git ignores it \(.gitignore:1:work/\)"):
        record(RecordOptions(synth_dir, project / "work", "plates", "1", data_repo=project, push=False))
    assert _git(project, "rev-list", "--all") == [] and not (project / "work" / "datasets").exists()
    (project / ".gitignore").write_text("*.tmp\n!**/datasets/**\n")  # a rule that re-includes them: not ignored
    repo = DataRepo(project, str(tmp_path / "remote"), project / "work")
    repo.check_trackable(project / "work" / "datasets" / "plates" / "1")
    (project / ".gitignore").write_text("work/datasets/*/*/\n")  # the version folders alone: no pointer to push
    with pytest.raises(VersioningError, match=r"work/datasets/plates/1: git ignores it \(.gitignore:1:work/datas"):
        record(RecordOptions(synth_dir, project / "work", "plates", "1", data_repo=project))
    assert _git(project, "rev-list", "--all") == [] and not (project / "work" / "datasets").exists()


def test_a_damaged_manifest_is_named_with_its_problem(synth_dir, tmp_path):
    options = RecordOptions(synth_dir, tmp_path / "w", "plates", "1", dvc=False)
    manifest = record(options).path / "manifest.json"
    manifest.write_text('{"name": "plates", ')
    with pytest.raises(AlprError, match=re.escape(f"{manifest}: not valid JSON")):
        record(options)


def test_a_rerun_refuses_a_version_folder_that_is_no_longer_as_recorded(synth_dir, tmp_path):
    """A retried record tracks, tags and catalogues what it finds: a file gone (a record killed while
    DVC replaced it, by hand) or changed since must stop it, not be versioned as the recording."""
    options = RecordOptions(synth_dir, tmp_path / "w", "plates", "1", dvc=False)
    folder = record(options).path
    image = sorted((folder / "images").iterdir())[0]
    image.unlink()
    (folder / "images" / ".xyz.tmp").write_bytes(b"half")
    with pytest.raises(AlprError, match=re.escape(f"{folder}: not as recorded (images/{image.name} is missing; "
                                                  "images/.xyz.tmp is not in its manifest)")):
        record(options)
    (folder / "images" / ".xyz.tmp").rename(image)
    with pytest.raises(AlprError, match=f"images/{image.name} has changed"):
        record(options)
    shutil.rmtree(folder)
    record(options)  # recorded again
    annotation = tmp_path / "w" / "annotations" / "plates" / "1" / image.name
    annotation.unlink()
    with pytest.raises(AlprError, match=f"1/{image.name} is missing\\); the source is intact: delete"):
        record(options)


def test_with_dvc_the_version_holds_copies_not_links_that_dvc_would_delete_and_copy_back(synth_dir, tmp_path,
                                                                                         monkeypatch):
    """DVC replaces a hard-linked file by a copy as it tracks it, deleting it first: a record killed
    then leaves the version short of it. Without DVC, links save the copies."""
    from alpr.versioning import DataRepo

    links, track = [], DataRepo.track

    def tracking(self, folder, tag, message):
        links.extend(p.stat().st_nlink for p in folder.rglob("*.jpg"))
        return track(self, folder, tag, message)

    monkeypatch.setattr(DataRepo, "track", tracking)
    record(RecordOptions(synth_dir, tmp_path / "w", "plates", "1", dvc_remote=str(tmp_path / "remote")))
    assert links and set(links) == {1}
    linked = record(RecordOptions(synth_dir, tmp_path / "w2", "plates", "1", dvc=False)).path
    assert all(p.stat().st_nlink > 1 for p in (linked / "images").iterdir())  # one file with the source's


def test_other_content_under_a_version_in_the_store_is_refused_before_anything_is_written(synth_dir, tmp_path):
    """Another workdir (its own database) recorded this version into the same store: it is not replaced."""
    store = (tmp_path / "bucket").as_uri()
    first = record(RecordOptions(synth_dir, tmp_path / "w1", "plates", "1", dvc=False, store=store))
    stored = {url: Path(url.removeprefix("file://")).read_bytes() for url in first.uploaded}
    other = tmp_path / "other"
    shutil.copytree(synth_dir, other)
    next(other.glob("*.json")).unlink()
    with pytest.raises(db.VersionConflict, match="datasets/plates/1/manifest.json holds dataset 'plates' version "
                                                 "'1' with other content"):
        record(RecordOptions(other, tmp_path / "w2", "plates", "1", dvc=False, store=store))
    assert not (tmp_path / "w2" / "datasets").exists()
    assert {url: Path(url.removeprefix("file://")).read_bytes() for url in first.uploaded} == stored
    assert record(RecordOptions(synth_dir, tmp_path / "w3", "plates", "1", dvc=False, store=store)).uploaded


@pytest.mark.parametrize("damaged, problem", [(b'{"content_sha256": ', "not valid JSON"),
                                               (b"\xff\xfe", "not valid JSON"),
                                               (b'["content_sha256"]', "JSON, but not an object")],
                         ids=["cut short", "not UTF-8", "a list"])
def test_a_damaged_manifest_in_the_store_is_named_before_anything_is_written(synth_dir, tmp_path, damaged, problem):
    from alpr.storage import StorageError

    store = tmp_path / "bucket"
    manifest = store / "datasets" / "plates" / "1" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(damaged)
    with pytest.raises(StorageError, match=re.escape(f"{store.as_uri()}/datasets/plates/1/manifest.json: "
                                                     f"not a dataset manifest: {problem}")):
        record(RecordOptions(synth_dir, tmp_path / "w", "plates", "1", dvc=False, store=store.as_uri()))
    assert not (tmp_path / "w" / "datasets").exists()
    assert manifest.read_bytes() == damaged


def test_a_database_that_is_no_url_or_not_there_is_a_clear_error_without_its_password():
    for url in ("user:s3cret@nowhere", "mysql+pymysql://root:s3cret@db:33O6/test"):  # O for 0: not a port
        with pytest.raises(db.DatabaseError, match="is not a SQLAlchemy URL") as caught:
            db.connect(url)
        assert "s3cret" not in str(caught.value)
    with pytest.raises(db.DatabaseError, match=r"database mysql\+pymysql://root:\*\*\*@127.0.0.1:1/test: .*") as caught:
        db.connect("mysql+pymysql://root:s3cret@127.0.0.1:1/test")  # nothing listens on port 1
    assert "s3cret" not in str(caught.value)
    with pytest.raises(db.DatabaseError, match=r"mysql://root:\*\*\*@127.0.0.1/test: its driver \(MySQLdb\) is not "
                                               r"installed; .* mysql\+pymysql://") as caught:
        db.connect("mysql://root:s3cret@127.0.0.1/test")  # the usual spelling asks for a driver not installed
    assert "s3cret" not in str(caught.value)
    with pytest.raises(db.DatabaseError, match="write an @ in the user name or password as %40") as caught:
        db.connect("mysql+pymysql://root:s3c@ret@127.0.0.1/test")
    assert "s3c" not in str(caught.value) and "ret@" not in str(caught.value)


def test_what_would_fail_late_is_refused_before_anything_is_written(synth_dir, tmp_path):
    from alpr.storage import StorageError
    from alpr.versioning import VersioningError

    workdir = tmp_path / "work"
    with pytest.raises(StorageError, match="unsupported storage URL"):
        record(RecordOptions(synth_dir, workdir, "plates", "1", store="s3://bucket/alpr"))
    with pytest.raises(VersioningError, match="does not hold the workdir"):
        record(RecordOptions(synth_dir, workdir, "plates", "1", data_repo=tmp_path / "elsewhere"))
    with pytest.raises(UsageError, match="it names a git tag"):
        record(RecordOptions(synth_dir, workdir, "plates", "1."))
    with pytest.raises(UsageError,
                       match=r"share its git tags with the annotations of dataset 'plates' \(plates-ann-v1\)"):
        record(RecordOptions(synth_dir, workdir, "plates-ann", "1"))
    with pytest.raises(UsageError, match=r"version '1-v2': '-v' in a version would make its git tag \(a-v1-v2\)"):
        record(RecordOptions(synth_dir, workdir, "a", "1-v2"))  # dataset a-v1's version 2 has that tag
    assert not workdir.exists()


def test_a_folder_without_labelme_files_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"empty: no labelme files \(\*\.json\) here to record"):
        record(RecordOptions(tmp_path / "empty", tmp_path / "work", "plates", "1", dvc=False))
    (tmp_path / "empty" / "a.json").write_text("{}")
    with pytest.raises(UsageError, match="empty: no valid labelme files to record"):
        record(RecordOptions(tmp_path / "empty", tmp_path / "work", "plates", "1", dvc=False, skip_invalid=True))
