import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from alpr import db
from alpr.errors import UsageError
from alpr.record import RecordOptions, record
from alpr.versioning import pull_dataset

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
    tags = subprocess.run(["git", "tag"], cwd=workdir, capture_output=True, text=True).stdout.split()
    commits = subprocess.run(["git", "rev-list", "--all"], cwd=workdir, capture_output=True, text=True).stdout

    again = record(options)
    assert not again.created
    assert _tree(workdir / "datasets") == snapshot
    assert subprocess.run(["git", "rev-list", "--all"], cwd=workdir, capture_output=True, text=True).stdout == commits
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


def test_conflict_with_the_folder_is_refused_before_the_database(synth_dir, labelme_copy, tmp_path):
    workdir = tmp_path / "work"
    record(RecordOptions(synth_dir, workdir, "ds", "1", dvc=False))
    (labelme_copy / "000003.json").unlink()
    other_db = f"sqlite:///{tmp_path / 'other.db'}"
    with pytest.raises(db.VersionConflict, match="already holds dataset"):
        record(RecordOptions(labelme_copy, workdir, "ds", "1", db_url=other_db, dvc=False))
    assert db.find_version(db.connect(other_db), "ds", "1") is None


def test_dvc_push_then_a_fresh_workdir_pulls_the_same_bytes(synth_dir, tmp_path):
    workdir, remote = tmp_path / "work", tmp_path / "remote"
    result = record(RecordOptions(synth_dir, workdir, "plates", "1", dvc_remote=str(remote)))
    assert any(remote.rglob("*")), "nothing was pushed to the DVC remote"
    shutil.rmtree(workdir / ".dvc" / "cache")  # the bytes must come from the remote

    fresh = tmp_path / "fresh"
    command = [sys.executable, "-m", "alpr.cli", "data", "pull", "--dataset", "plates", "--version", "1",
               "--workdir", "fresh", "--data-repo", "work"]  # relative, as the README gives them
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True)
    assert _tree(fresh / "datasets" / "plates" / "1") == _tree(result.path)
    manifest = json.loads((fresh / "datasets" / "plates" / "1" / "manifest.json").read_text())
    assert manifest["annotations"]["tag"] == "plates-ann-v1"

    failed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert failed.returncode == 1 and "already exists" in failed.stderr


def test_pulling_an_unknown_version_fails_clearly(synth_dir, tmp_path):
    workdir = tmp_path / "work"
    record(RecordOptions(synth_dir, workdir, "plates", "1", dvc_remote=str(tmp_path / "remote")))
    with pytest.raises(Exception, match="plates-v9"):
        pull_dataset(str(workdir), "plates", "9", tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "datasets" / "plates" / "9").exists()


def test_record_step_prints_a_summary(synth_dir, tmp_path):
    result = subprocess.run([sys.executable, "steps/record.py", "--source", str(synth_dir), "--workdir",
                             str(tmp_path / "w"), "--dataset", "sum", "--version", "1", "--no-push",
                             "--store", (tmp_path / "bucket").as_uri()], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "dataset sum version 1" in result.stdout and "tags: sum-v1" in result.stdout
    assert (tmp_path / "bucket" / "datasets" / "sum" / "1" / "splits.tar.gz").is_file()
    untracked = subprocess.run([sys.executable, "steps/record.py", "--source", str(synth_dir), "--workdir",
                                str(tmp_path / "u"), "--dataset", "sum", "--version", "1", "--no-dvc"],
                               capture_output=True, text=True, cwd=ROOT)
    assert untracked.returncode == 0 and "tags:" not in untracked.stdout and "--no-dvc" in untracked.stdout


def test_a_database_that_is_no_url_or_not_there_is_a_clear_error_without_its_password():
    with pytest.raises(db.DatabaseError, match="is not a SQLAlchemy URL") as caught:
        db.connect("user:s3cret@nowhere")
    assert "s3cret" not in str(caught.value)
    with pytest.raises(db.DatabaseError, match=r"database mysql\+pymysql://root:\*\*\*@127.0.0.1:1/test: .*") as caught:
        db.connect("mysql+pymysql://root:s3cret@127.0.0.1:1/test")  # nothing listens on port 1
    assert "s3cret" not in str(caught.value)


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
    assert not workdir.exists()
