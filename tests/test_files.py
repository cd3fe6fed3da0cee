import pytest

from alpr.files import copy_atomic, write_atomic, written_whole


def test_a_file_written_whole_replaces_the_old_one_only_when_the_writing_ends_well(tmp_path):
    path = tmp_path / "metrics.json"
    write_atomic(path, "old\n")
    with pytest.raises(RuntimeError):
        with written_whole(path) as partial:
            partial.write_text("half")
            raise RuntimeError("killed while writing")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    write_atomic(path, b"new\n")
    copy_atomic(path, tmp_path / "copy.json")
    assert (tmp_path / "copy.json").read_bytes() == b"new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.json", "metrics.json"]  # no partial left
