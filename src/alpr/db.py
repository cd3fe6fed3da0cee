"""The dataset catalogue: SQLAlchemy Core tables, SQLite by default, MySQL in a cluster."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from alpr.errors import AlprError

DB_URL_ENV = "ALPR_DB_URL"

metadata = sa.MetaData()


def _name(length: int) -> sa.types.TypeEngine:
    """A name compared as written: MySQL's and MariaDB's default collation would take `Plates` and `plates`,
    or run `A` and `a`, for one, where SQLite keeps them apart."""
    from sqlalchemy.dialects import mysql

    return sa.String(length).with_variant(mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"),
                                          "mysql", "mariadb")


# every text column, paths and sources too, in full UTF-8 on MySQL and MariaDB whatever the server's default
# (a latin1 server refused a Korean source path, error 1366, after DVC had tagged the version)
TEXT_IN_UTF8MB4 = {"mysql_charset": "utf8mb4", "mariadb_charset": "utf8mb4"}

dataset_versions = sa.Table(
    "dataset_versions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", _name(128), nullable=False),
    sa.Column("version", _name(64), nullable=False),
    sa.Column("content_sha256", sa.String(64), nullable=False),
    sa.Column("dataset_tag", sa.String(256), nullable=False),
    sa.Column("path", sa.String(1024), nullable=False),
    sa.Column("num_images", sa.Integer, nullable=False),
    sa.Column("num_annotations", sa.Integer, nullable=False),
    sa.Column("num_plates", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("name", "version", name="uq_dataset_version"),
    **TEXT_IN_UTF8MB4,
)

annotation_sources = sa.Table(
    "annotation_sources", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset_version_id", sa.Integer, sa.ForeignKey("dataset_versions.id"), nullable=False, unique=True),
    sa.Column("source", sa.String(1024), nullable=False),
    sa.Column("path", sa.String(1024), nullable=False),
    sa.Column("tag", sa.String(256), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("num_files", sa.Integer, nullable=False),
    **TEXT_IN_UTF8MB4,
)

images = sa.Table(
    "images", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset_version_id", sa.Integer, sa.ForeignKey("dataset_versions.id"), nullable=False),
    sa.Column("file_name", _name(512), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("split", sa.String(8), nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("plate_count", sa.Integer, nullable=False),
    sa.UniqueConstraint("dataset_version_id", "file_name", name="uq_image_file"),
    **TEXT_IN_UTF8MB4,
)


runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", _name(128), nullable=False, unique=True),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("dataset", sa.String(128), nullable=False),
    sa.Column("dataset_version", sa.String(64), nullable=False),
    sa.Column("params", sa.Text, nullable=False),  # the training settings, JSON
    sa.Column("best_checkpoint", sa.String(1024), nullable=True),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    **TEXT_IN_UTF8MB4,
)

run_metrics = sa.Table(
    "run_metrics", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", _name(128), nullable=False),
    sa.Column("checkpoint", _name(256), nullable=False),
    sa.Column("split", sa.String(8), nullable=False),
    sa.Column("name", _name(64), nullable=False),
    sa.Column("value", sa.Double, nullable=False),  # sa.Float is single precision on MariaDB
    sa.UniqueConstraint("run_id", "checkpoint", "split", "name", name="uq_run_metric"),
    **TEXT_IN_UTF8MB4,
)


class DatabaseError(AlprError, RuntimeError):
    """The database URL is not one, or the database cannot be reached."""


class VersionConflict(AlprError, RuntimeError):
    """A dataset version already exists with other content."""


def default_db_url(workdir: Path) -> str:
    return os.environ.get(DB_URL_ENV) or sqlite_url(workdir / "alpr.db")


def sqlite_url(path: Path) -> str:
    """The URL of a SQLite file; URL.create quotes the path: a folder named a%41b or a?b would otherwise
    be read as aAb or a."""
    return sa.URL.create("sqlite", database=str(path.resolve())).render_as_string(hide_password=False)


def safe_url(url: str | sa.URL) -> str:
    """The URL with any password masked, for logs."""
    return make_url(url).render_as_string(hide_password=True)


def connect(url: str) -> Engine:
    """An engine on the database, its tables made; an error that says which database (password hidden) and
    why, if the URL is not one or the database cannot be reached."""
    try:
        parsed = make_url(url)
    except (sa.exc.ArgumentError, ValueError):  # ValueError: a port not a number; the text may hold a password
        raise DatabaseError("the database URL (--db-url or ALPR_DB_URL) is not a SQLAlchemy URL, e.g. "
                            "sqlite:////work/alpr.db or mysql+pymysql://USER:PASSWORD@HOST:3306/DB") from None
    if "@" in (parsed.host or ""):  # the password held an @ not written %40: the host shown would hold its end
        raise DatabaseError("the database URL (--db-url or ALPR_DB_URL) has an @ after the one before its host: "
                            "write an @ in the user name or password as %40")
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = sa.create_engine(parsed, pool_pre_ping=True)
        try:
            metadata.create_all(engine)
        except sa.exc.DBAPIError:  # another step made a table between the check and the CREATE: now it is seen
            metadata.create_all(engine)
    except (sa.exc.ArgumentError, sa.exc.DBAPIError) as error:
        raise DatabaseError(f"database {safe_url(url)}: {getattr(error, 'orig', None) or error}") from None
    except TypeError as error:  # the driver's connect() takes no such argument: a query option, ?sslmode=require
        raise DatabaseError(f"database {safe_url(url)}: an option in the URL (after its ?) is not one its driver "
                            f"takes ({error})") from None
    except ImportError as error:  # mysql:// asks for MySQLdb, postgresql:// for psycopg2
        raise DatabaseError(f"database {safe_url(url)}: its driver ({error.name}) is not installed; the one "
                            "installed for MySQL and MariaDB is PyMySQL: mysql+pymysql://USER:PASSWORD@HOST:3306/DB"
                            ) from None
    return engine


def _named_errors(function):
    """The database's errors after connecting (a lost server, a lock, a value too long) as a DatabaseError
    that names the database, password hidden."""
    @functools.wraps(function)
    def named(engine: Engine, *args, **kwargs):
        try:
            return function(engine, *args, **kwargs)
        except sa.exc.DBAPIError as error:
            raise DatabaseError(f"database {safe_url(engine.url)}: {error.orig}") from None
    return named


@dataclass(frozen=True)
class DatasetRow:
    name: str
    version: str
    content_sha256: str
    dataset_tag: str
    path: str
    num_images: int
    num_annotations: int
    num_plates: int


@dataclass(frozen=True)
class SourceRow:
    source: str
    path: str
    tag: str
    sha256: str
    num_files: int


@dataclass(frozen=True)
class ImageRow:
    file_name: str
    sha256: str
    split: str
    width: int
    height: int
    plate_count: int


@_named_errors
def find_version(engine: Engine, name: str, version: str) -> sa.Row | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(dataset_versions).where(
            dataset_versions.c.name == name, dataset_versions.c.version == version)).first()


def check_version(engine: Engine, name: str, version: str, content_sha256: str) -> bool:
    """True when the version is already recorded with this content; raises VersionConflict on other content."""
    row = find_version(engine, name, version)
    if row is None:
        return False
    if row.content_sha256 != content_sha256:
        raise _conflict(name, version, row.content_sha256, content_sha256)
    return True


def _conflict(name: str, version: str, recorded: str, new: str) -> VersionConflict:
    return VersionConflict(f"dataset {name!r} version {version!r} is already recorded with other content "
                           f"(sha256 {recorded[:12]}…, this run {new[:12]}…); record it under a new version")


@_named_errors
def record_version(engine: Engine, dataset: DatasetRow, source: SourceRow, rows: list[ImageRow]) -> bool:
    """Inserts the version, its source and images in one transaction; False if it was already there."""
    try:
        return _insert_version(engine, dataset, source, rows)
    except sa.exc.IntegrityError:
        # another record of this version committed between our check and our insert: the same content
        # is then recorded, other content a conflict
        if not check_version(engine, dataset.name, dataset.version, dataset.content_sha256):
            raise
        return False


def _insert_version(engine: Engine, dataset: DatasetRow, source: SourceRow, rows: list[ImageRow]) -> bool:
    with engine.begin() as conn:
        existing = conn.execute(sa.select(dataset_versions.c.content_sha256).where(
            dataset_versions.c.name == dataset.name, dataset_versions.c.version == dataset.version)).first()
        if existing is not None:
            if existing.content_sha256 != dataset.content_sha256:
                raise _conflict(dataset.name, dataset.version, existing.content_sha256, dataset.content_sha256)
            return False
        version_id = conn.execute(dataset_versions.insert().values(
            **dataset.__dict__, created_at=datetime.now(timezone.utc).replace(tzinfo=None))).inserted_primary_key[0]
        conn.execute(annotation_sources.insert().values(dataset_version_id=version_id, **source.__dict__))
        if rows:
            conn.execute(images.insert(), [{"dataset_version_id": version_id, **row.__dict__} for row in rows])
    return True


@_named_errors
def count_images(engine: Engine, name: str, version: str) -> dict[str, int]:
    """Images per split of a recorded version."""
    query = (sa.select(images.c.split, sa.func.count())
             .join(dataset_versions, images.c.dataset_version_id == dataset_versions.c.id)
             .where(dataset_versions.c.name == name, dataset_versions.c.version == version)
             .group_by(images.c.split))
    with engine.connect() as conn:
        return {split: count for split, count in conn.execute(query)}


@_named_errors
def record_run(engine: Engine, run_id: str, model: str, dataset: str, version: str, params: dict,
               best_checkpoint: str | None, split: str, scores: dict[str, dict[str, float]]) -> None:
    """Upserts the run and replaces its metrics for this split, in one transaction (re-runs add no rows).
    A best_checkpoint of None leaves the run's as it was (a split that picks no model)."""
    import json

    now = datetime.now(timezone.utc).replace(tzinfo=None)
    row = dict(model=model, dataset=dataset, dataset_version=version, params=json.dumps(params, sort_keys=True),
               updated_at=now, **({} if best_checkpoint is None else {"best_checkpoint": best_checkpoint}))
    try:
        _upsert_run(engine, run_id, row, split, scores)
    except sa.exc.IntegrityError:  # another evaluate of this run inserted it between our check and insert
        _upsert_run(engine, run_id, row, split, scores)


def _upsert_run(engine: Engine, run_id: str, row: dict, split: str, scores: dict[str, dict[str, float]]) -> None:
    with engine.begin() as conn:
        if conn.execute(sa.select(runs.c.id).where(runs.c.run_id == run_id)).first():
            conn.execute(runs.update().where(runs.c.run_id == run_id).values(**row))
        else:
            conn.execute(runs.insert().values(run_id=run_id, **row))
        conn.execute(run_metrics.delete().where(run_metrics.c.run_id == run_id, run_metrics.c.split == split))
        values = [dict(run_id=run_id, checkpoint=checkpoint, split=split, name=name, value=float(value))
                  for checkpoint, metrics in scores.items() for name, value in metrics.items()]
        if values:
            conn.execute(run_metrics.insert(), values)
