"""Object storage by URL: ``file://`` directories on one machine, ``gs://`` buckets in a cluster.

gs:// uses google-cloud-storage with the key file named by GOOGLE_APPLICATION_CREDENTIALS,
or anonymous access to the emulator named by STORAGE_EMULATOR_HOST.
"""

from __future__ import annotations

import mimetypes
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager, suppress
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlparse

from alpr.errors import AlprError

SCHEMES = ("file", "gs")


class StorageError(AlprError, RuntimeError):
    pass


def _split(url: str) -> tuple[str, str, str]:
    parsed = urlparse(url)
    if parsed.scheme not in SCHEMES:
        raise StorageError(f"{url!r}: unsupported storage URL; expected file:///path or gs://bucket/key")
    if "?" in url or "#" in url:  # a query or fragment is no part of the path: every object would land on one
        raise StorageError(f"{url!r}: a storage URL holds no '?' or '#'")
    if parsed.scheme == "gs" and not parsed.netloc:
        raise StorageError(f"{url!r}: gs:// URL needs a bucket name")
    if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
        raise StorageError(f"{url!r}: a file:// URL names no host; expected file:///absolute/path "
                           f"(here file:///{parsed.netloc}{parsed.path}?)")
    # gs:// object names are taken as written, as gsutil takes them; file:// paths as Path.as_uri quotes them
    return parsed.scheme, parsed.netloc, parsed.path.lstrip("/") if parsed.scheme == "gs" else unquote(parsed.path)


def _object(url: str) -> tuple[str, str, str]:
    """The parts of a URL that names one object, not a bucket or a folder."""
    scheme, bucket, key = _split(url)
    if not key or key.endswith("/") or (scheme == "file" and Path(key).is_dir()):
        raise StorageError(f"{url}: names a {'folder' if key else 'bucket'}, not an object; expected "
                           f"{scheme}://{bucket}/.../NAME")
    return scheme, bucket, key


def check_url(url: str) -> None:
    """An error now, for a URL that no upload to it could succeed with: one of another kind, gs://
    without credentials or of a bucket not there, a file:// folder that cannot be made or written."""
    scheme, bucket, key = _split(url)
    if scheme == "gs":
        from google.api_core.exceptions import Forbidden

        with _gcs_errors(url, missing=f"no bucket {bucket!r}"):
            try:
                next(iter(_gcs_client().list_blobs(bucket, prefix=key, max_results=1)), None)
            except Forbidden:  # not allowed to list there: the upload will tell
                pass
    else:
        made = next(p for p in (Path(key), *Path(key).parents) if p.exists())  # the rest is made on upload
        if not (made.is_dir() and os.access(made, os.W_OK | os.X_OK)):
            raise StorageError(f"{url}: cannot write under {made} ({'not writable' if made.is_dir() else 'a file'})")


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


@lru_cache(maxsize=1)
def _gcs_client():
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "alpr"),
                              credentials=AnonymousCredentials())
    drop_missing_key_file()
    return storage.Client()


def drop_missing_key_file() -> None:
    """Workflow steps name the key file of an optional Secret; where there is none (Workload Identity, a
    node's service account), Google's client would fail on the missing file rather than look further."""
    key = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if key and not Path(key).is_file():
        del os.environ["GOOGLE_APPLICATION_CREDENTIALS"]


def _blob(bucket: str, key: str):
    return _gcs_client().bucket(bucket).blob(key)


@contextmanager
def _gcs_errors(url: str, missing: str):
    """Google Cloud Storage's failures (no credentials, ``missing`` for a 404, a refusal, no connection)
    as one error that names the URL, not a traceback after the work that came before."""
    from google.api_core.exceptions import GoogleAPIError, NotFound
    from google.auth.exceptions import GoogleAuthError
    from requests.exceptions import RequestException

    try:
        yield
    except NotFound:
        raise StorageError(f"{url}: {missing}") from None
    except (GoogleAPIError, GoogleAuthError, RequestException) as error:
        raise StorageError(f"{url}: {error}") from None


def upload_file(path: Path, url: str) -> None:
    scheme, bucket, key = _object(url)
    if scheme == "file":
        def copy(out) -> None:
            with path.open("rb") as source:
                shutil.copyfileobj(source, out)

        _write_local(url, Path(key), copy, f"uploading {path}")
    else:
        with _gcs_errors(url, missing=f"no bucket {bucket!r}"):
            _blob(bucket, key).upload_from_filename(str(path))


def write_bytes(url: str, data: bytes) -> None:
    scheme, bucket, key = _object(url)
    if scheme == "file":
        _write_local(url, Path(key), lambda out: out.write(data), "writing")
    else:
        with _gcs_errors(url, missing=f"no bucket {bucket!r}"):
            _blob(bucket, key).upload_from_string(data, content_type=content_type(key))


def content_type(name: str) -> str:
    """An object's type by its name (google-cloud-storage would store bytes as text/plain)."""
    kind, encoding = mimetypes.guess_type(name)
    return "application/gzip" if encoding == "gzip" else kind or "application/octet-stream"


def _write_local(url: str, target: Path, write, doing: str) -> None:
    """A file:// object written whole: into a file beside it, renamed over it, none left on failure."""
    # a file of our own making, not mkstemp's, so that its mode is the umask's, not 0600
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("xb") as out:
            write(out)
        os.replace(tmp, target)
    except OSError as error:
        raise StorageError(f"{url}: {doing}: {error.strerror or error}") from None
    finally:
        with suppress(OSError):  # where the folder could not be made, there is nothing to remove
            tmp.unlink(missing_ok=True)


def download_file(url: str, path: Path) -> None:
    scheme, bucket, key = _object(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.download")  # two downloads of one path: their own
    try:
        if scheme == "file":
            if not Path(key).is_file():
                raise StorageError(f"{url}: no such object")
            shutil.copyfile(key, tmp)
        else:
            with _gcs_errors(url, missing="no such object"):
                _blob(bucket, key).download_to_filename(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_bytes(url: str) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "object"
        download_file(url, target)
        return target.read_bytes()


def exists(url: str) -> bool:
    scheme, bucket, key = _object(url)
    if scheme == "file":
        return Path(key).is_file()
    with _gcs_errors(url, missing="not found"):
        return _blob(bucket, key).exists()
