import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from alpr import storage
from alpr.record import RecordOptions, record
from alpr.versioning import pull_dataset


@pytest.fixture
def emulator_env(gcs_emulator, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    storage._gcs_client.cache_clear()
    yield
    storage._gcs_client.cache_clear()


def test_gcs_round_trip_through_the_emulator(emulator_env, tmp_path):
    source = tmp_path / "model.bin"
    source.write_bytes(bytes(range(256)) * 100)
    url = "gs://alpr-test/models/run-1/model.bin"
    storage.upload_file(source, url)
    assert storage.exists(url)
    storage.download_file(url, tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
    with pytest.raises(storage.StorageError, match="no such object"):
        storage.read_bytes("gs://alpr-test/missing")


def test_file_urls_round_trip(tmp_path):
    url = (tmp_path / "bucket" / "a" / "b.txt").as_uri()
    storage.write_bytes(url, b"hello")
    assert storage.read_bytes(url) == b"hello" and storage.exists(url)
    with pytest.raises(storage.StorageError, match="unsupported storage URL"):
        storage.exists("s3://bucket/key")
    with pytest.raises(storage.StorageError, match="names no host; expected file:///absolute/path"):
        storage.write_bytes("file://bucket/a.txt", b"lost")  # would have written /a.txt


def test_a_url_with_a_query_or_fragment_or_naming_no_object_is_refused_before_anything_is_written(tmp_path):
    """urlparse would drop '#1' or '?x' and put every object at one path, each over the one before."""
    for url in ((tmp_path / "store").as_uri() + "#1", "gs://bucket/alpr?x"):
        with pytest.raises(storage.StorageError, match="holds no '\\?' or '#'"):
            storage.check_url(url)
        with pytest.raises(storage.StorageError, match="holds no"):
            storage.write_bytes(storage.join(url, "manifest.json"), b"{}")
    assert not (tmp_path / "store").exists()
    (tmp_path / "folder").mkdir()
    for url, what in (("gs://bucket", "a bucket"), ("gs://bucket/models/", "a folder"),
                      ((tmp_path / "folder").as_uri(), "a folder")):
        with pytest.raises(storage.StorageError, match=f"{url}: names {what}, not an object"):
            storage.read_bytes(url)


def test_a_failed_file_upload_names_the_url_and_leaves_no_partial_file(tmp_path):
    (tmp_path / "bucket").mkdir()
    url = (tmp_path / "bucket").as_uri() + "/best.pth"
    # a source that opens but fails mid-copy, as a full disk or a lost volume does (root or not)
    with pytest.raises(storage.StorageError, match=f"{url}: uploading /proc/self/mem: Input/output error"):
        storage.upload_file(Path("/proc/self/mem"), url)
    assert list((tmp_path / "bucket").iterdir()) == []


def test_a_store_whose_folder_is_a_file_is_named_with_the_url(tmp_path):
    (tmp_path / "bucket").write_text("a file, not a folder")
    url = (tmp_path / "bucket").as_uri() + "/runs/best.pth"
    with pytest.raises(storage.StorageError, match=f"^{url}: uploading {tmp_path / 'm.bin'}: Not a directory$"):
        (tmp_path / "m.bin").write_bytes(b"weights")
        storage.upload_file(tmp_path / "m.bin", url)
    with pytest.raises(storage.StorageError, match=f"^{url}: writing: Not a directory$"):  # no temporary file named
        storage.write_bytes(url, b"manifest")
    assert (tmp_path / "bucket").read_text() == "a file, not a folder"


def test_a_file_store_writes_files_others_may_read_as_the_umask_allows(tmp_path):
    previous = os.umask(0o022)
    try:
        storage.write_bytes((tmp_path / "bucket" / "m.json").as_uri(), b"{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "bucket" / "m.json").stat().st_mode & 0o777 == 0o644


def test_record_uploads_manifest_and_splits_to_gcs(emulator_env, synth_dir, tmp_path):
    result = record(RecordOptions(synth_dir, tmp_path / "w", "gcs", "1", dvc=False, store="gs://alpr-test/alpr"))
    assert result.uploaded == ["gs://alpr-test/alpr/datasets/gcs/1/manifest.json",
                               "gs://alpr-test/alpr/datasets/gcs/1/splits.tar.gz"]
    assert storage.read_bytes(result.uploaded[0]) == (result.path / "manifest.json").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(result.uploaded[1]))) as tar:
        assert sorted(tar.getnames()) == ["manifest.json", "test.json", "train.json", "val.json"]
        assert tar.extractfile("train.json").read() == (result.path / "train.json").read_bytes()
    types = {}
    for url in result.uploaded:
        blob = storage._blob("alpr-test", url.removeprefix("gs://alpr-test/"))
        blob.reload()
        types[url.rsplit("/", 1)[1]] = blob.content_type
    assert types == {"manifest.json": "application/json", "splits.tar.gz": "application/gzip"}  # not text/plain


def test_dvc_pushes_to_a_gs_remote_and_a_fresh_workdir_pulls_the_same_bytes(emulator_env, synth_dir, tmp_path):
    """A cluster's dataset versions: DVC's gs:// remote (dvc-gs) through the emulator."""
    result = record(RecordOptions(synth_dir, tmp_path / "work", "plates", "1", dvc_remote="gs://alpr-test/dvc"))
    shutil.rmtree(tmp_path / "work" / ".dvc" / "cache")  # the bytes must come from the bucket
    pulled = pull_dataset(str(tmp_path / "work"), "plates", "1", tmp_path / "fresh")
    files = {p.relative_to(pulled): p.read_bytes() for p in pulled.rglob("*") if p.is_file()}
    assert files == {p.relative_to(result.path): p.read_bytes() for p in result.path.rglob("*") if p.is_file()}
    assert Path("images") in {f.parent for f in files}


def test_a_key_file_the_secret_did_not_provide_is_not_insisted_on(tmp_path, monkeypatch):
    """Without gcs-key.json in the Secret, Workload Identity's credentials must be found instead."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "gcs-key.json"))
    storage.drop_missing_key_file()
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in os.environ
    (tmp_path / "gcs-key.json").write_text("{}")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "gcs-key.json"))
    storage.drop_missing_key_file()
    assert os.environ["GOOGLE_APPLICATION_CREDENTIALS"] == str(tmp_path / "gcs-key.json")


def test_a_missing_bucket_is_an_error_that_names_the_url(emulator_env, tmp_path):
    (tmp_path / "m.bin").write_bytes(b"weights")
    with pytest.raises(storage.StorageError, match=r"^gs://no-such-bucket/m.bin: no bucket 'no-such-bucket'$"):
        storage.upload_file(tmp_path / "m.bin", "gs://no-such-bucket/m.bin")
    assert not storage.exists("gs://no-such-bucket/m.bin")


def test_a_store_no_upload_could_reach_is_refused_at_the_check(emulator_env, tmp_path):
    """Before record writes, tracks and lists a version, not at its upload, after all of that."""
    with pytest.raises(storage.StorageError, match=r"^gs://no-such-bucket/alpr: no bucket 'no-such-bucket'$"):
        storage.check_url("gs://no-such-bucket/alpr")
    (tmp_path / "a-file").write_text("not a folder")
    url = (tmp_path / "a-file" / "store").as_uri()
    with pytest.raises(storage.StorageError, match=f"^{url}: cannot write under {tmp_path / 'a-file'} \\(a file\\)$"):
        storage.check_url(url)
    storage.check_url((tmp_path / "new" / "store").as_uri())  # folders still to make: made on upload
    assert not (tmp_path / "new").exists()


def test_gs_without_credentials_fails_at_the_check_before_any_work(tmp_path, monkeypatch):
    for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # no metadata server to ask, as off a cloud machine
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # nor gcloud's own credentials
    storage._gcs_client.cache_clear()
    try:
        with pytest.raises(storage.StorageError, match="^gs://alpr/models: .*credentials were not found"):
            storage.check_url("gs://alpr/models")
    finally:
        storage._gcs_client.cache_clear()


def test_downloads_of_one_object_to_one_path_at_once_each_land_whole(tmp_path):
    """Two servers fetching best.pth to one cache path: a shared partial name let one rename or delete the
    other's half-written file."""
    from concurrent.futures import ThreadPoolExecutor

    source = tmp_path / "best.pth"
    source.write_bytes(os.urandom(8 << 20))
    target = tmp_path / "cache" / "best.pth"
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda _: storage.download_file(source.as_uri(), target), range(12)))
    assert target.read_bytes() == source.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["best.pth"]  # no partial file left
