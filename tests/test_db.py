"""The catalogue when several steps use one database at once, on SQLite and on the MariaDB at 127.0.0.1."""

import uuid

import pytest
import sqlalchemy as sa

from alpr import db


@pytest.fixture
def new_db_url(db_url):
    """A database no step has used yet: its own file, or its own MariaDB database, dropped afterwards."""
    if db_url.startswith("sqlite"):
        yield db_url
        return
    name = f"alpr_{uuid.uuid4().hex[:10]}"
    server = sa.create_engine(db_url)
    with server.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield sa.make_url(db_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with server.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE {name}"))
        server.dispose()


def _first_time(starting: str, meanwhile) -> callable:
    """A before_cursor_execute hook that runs ``meanwhile`` once, before the first statement that begins
    with ``starting``: another step's work landing between this one's check and its write."""
    done = []

    def hook(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith(starting) and not done:
            done.append(statement)
            meanwhile()

    hook.done = done
    return hook


def test_tables_another_step_made_between_the_check_and_the_create_are_taken(new_db_url):
    hook = _first_time("CREATE TABLE", lambda: db.metadata.create_all(sa.create_engine(new_db_url)))
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", hook)
    try:
        engine = db.connect(new_db_url)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", hook)
    assert hook.done, "the hook never ran: the database was not new"
    assert set(db.metadata.tables) <= set(sa.inspect(engine).get_table_names())


def _record(engine, checkpoint: str, eir: float) -> None:
    db.record_run(engine, "run-1", "smoke", "plates", "1", {"lr": 0.002}, checkpoint, "val",
                  {checkpoint: {"EIR": eir}})


def test_a_run_another_evaluate_recorded_between_the_check_and_the_insert_is_updated(new_db_url):
    engine, other = db.connect(new_db_url), db.connect(new_db_url)
    hook = _first_time("INSERT INTO RUNS", lambda: _record(other, "other.pth", 0.5))
    sa.event.listen(engine, "before_cursor_execute", hook)
    _record(engine, "best.pth", 0.75)
    assert hook.done
    with engine.connect() as conn:
        assert conn.execute(sa.select(db.runs.c.best_checkpoint)).scalars().all() == ["best.pth"]
        assert conn.execute(sa.select(db.run_metrics.c.checkpoint, db.run_metrics.c.value)).all() == \
            [("best.pth", 0.75)]


def _version(engine, content: str) -> bool:
    rows = [db.ImageRow(f"{i}.jpg", f"{i:064x}", "train", 64, 48, 1) for i in range(3)]
    return db.record_version(engine, db.DatasetRow("plates", "1", content * 64, "t", "p", 3, 0, 0),
                             db.SourceRow("s", "a", "t", content * 64, 3), rows)


@pytest.mark.parametrize("content, outcome", [("a", False), ("b", db.VersionConflict)], ids=["same", "other"])
def test_a_version_another_record_inserted_between_the_check_and_the_insert(new_db_url, content, outcome):
    """The same content is then recorded (False: nothing new), other content a conflict; one set of rows."""
    engine, other = db.connect(new_db_url), db.connect(new_db_url)
    hook = _first_time("INSERT INTO DATASET_VERSIONS", lambda: _version(other, "a"))
    sa.event.listen(engine, "before_cursor_execute", hook)
    if outcome is False:
        assert _version(engine, content) is False
    else:
        with pytest.raises(outcome, match="already recorded with other content"):
            _version(engine, content)
    assert hook.done
    with engine.connect() as conn:
        assert conn.execute(sa.select(db.dataset_versions.c.content_sha256)).scalars().all() == ["a" * 64]
        assert conn.execute(sa.select(sa.func.count()).select_from(db.images)).scalar() == 3
        assert conn.execute(sa.select(sa.func.count()).select_from(db.annotation_sources)).scalar() == 1


def test_an_error_after_connecting_names_the_database(new_db_url):
    engine = db.connect(new_db_url)
    with engine.begin() as conn:  # another hand dropped it
        conn.execute(sa.text("DROP TABLE run_metrics"))
    with pytest.raises(db.DatabaseError, match=r"^database .*run_metrics") as error:
        _record(engine, "best.pth", 0.75)
    assert str(error.value).startswith(f"database {db.safe_url(new_db_url)}: ")


def test_names_that_differ_only_in_case_are_two_runs(new_db_url):
    engine = db.connect(new_db_url)
    for run_id in ("Run-A", "run-a"):
        db.record_run(engine, run_id, "smoke", "plates", "1", {}, f"{run_id}.pth", "val", {})
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.select(db.runs.c.run_id, db.runs.c.best_checkpoint)).all()) == \
            [("Run-A", "Run-A.pth"), ("run-a", "run-a.pth")]


def test_file_names_that_differ_only_by_an_accent_are_two_images(new_db_url):
    engine = db.connect(new_db_url)
    rows = [db.ImageRow(name, f"{i:064x}", "train", 64, 48, 1) for i, name in enumerate(["e.jpg", "é.jpg"])]
    assert db.record_version(engine, db.DatasetRow("plates", "1", "a" * 64, "t", "p", 2, 0, 0),
                             db.SourceRow("s", "a", "t", "a" * 64, 2), rows)
    assert db.count_images(engine, "plates", "1") == {"train": 2}


def test_paths_in_any_script_are_recorded_on_a_latin1_server():
    """A MySQL or MariaDB whose database defaults to latin1 refused a Korean source path (error 1366),
    after DVC had tagged the version: every text column is utf8mb4 (SQLite keeps all text as UTF-8)."""
    from conftest import MARIADB_URL, mariadb_available

    if not mariadb_available():
        pytest.fail(f"no MariaDB at {MARIADB_URL}")
    db_url = MARIADB_URL
    name = f"alpr_{uuid.uuid4().hex[:10]}"
    server = sa.create_engine(db_url)
    with server.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name} CHARACTER SET latin1"))
    try:
        engine = db.connect(sa.make_url(db_url).set(database=name).render_as_string(hide_password=False))
        source = "/data/번호판/2026"
        assert db.record_version(engine, db.DatasetRow("plates", "1", "a" * 64, "t", "/work/데이터", 1, 0, 0),
                                 db.SourceRow(source, "a", "t", "a" * 64, 1),
                                 [db.ImageRow("차.jpg", "0" * 64, "train", 64, 48, 1)])
        with engine.connect() as conn:
            assert conn.execute(sa.select(db.annotation_sources.c.source)).scalar_one() == source
        engine.dispose()
    finally:
        with server.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE {name}"))
        server.dispose()


@pytest.mark.parametrize("folder", ["a%41b", "a?b", "a#b"])
def test_the_default_database_is_in_the_workdir_whatever_its_name(tmp_path, monkeypatch, folder):
    """Written into a URL as it is, a%41b would be read as aAb, and a?b as a with a query."""
    monkeypatch.delenv(db.DB_URL_ENV, raising=False)
    workdir = tmp_path / folder
    db.connect(db.default_db_url(workdir)).dispose()
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")] == [folder, f"{folder}/alpr.db"]


def test_an_option_the_driver_does_not_take_is_named_without_the_password():
    """PyMySQL's connect() raised a TypeError on it (SQLite's driver ignores such options, with a warning)."""
    url = "mysql+pymysql://root:s3cret@127.0.0.1:3306/test?sslmode=require"  # psycopg's spelling
    with pytest.raises(db.DatabaseError) as error:
        db.connect(url)
    assert str(error.value) == ("database mysql+pymysql://root:***@127.0.0.1:3306/test?sslmode=require: an option "
                                "in the URL (after its ?) is not one its driver takes (Connection.__init__() got an "
                                "unexpected keyword argument 'sslmode')")
