"""alpr.cli: what a user sees of an error."""

import pytest

from alpr.cli import _guarded, user_message
from alpr.errors import AlprError


class _GoneImage:
    """A dataset whose one image went missing after record, as a training step's loader meets it."""

    def __len__(self):
        return 1

    def __getitem__(self, index):
        raise AlprError("/work/datasets/plates/1/images/000001.jpg: No such file or directory")


class _Raising(_GoneImage):
    def __init__(self, error: Exception):
        self.error = error

    def __getitem__(self, index):
        raise self.error


def test_an_error_in_a_data_loader_worker_is_shown_as_the_worker_raised_it(capsys):
    from torch.utils.data import DataLoader

    with pytest.raises(AlprError) as raised:
        next(iter(DataLoader(_GoneImage(), num_workers=1)))
    assert "Original Traceback" in str(raised.value)  # torch's wrapping, which the user is spared
    assert user_message(raised.value) == "/work/datasets/plates/1/images/000001.jpg: No such file or directory"
    with pytest.raises(SystemExit) as exited:
        _guarded(lambda: next(iter(DataLoader(_GoneImage(), num_workers=1))))
    assert exited.value.code == 1
    assert capsys.readouterr().err == "error: /work/datasets/plates/1/images/000001.jpg: No such file or directory\n"
    assert user_message(AlprError("a: b\nc: d")) == "a: b\nc: d"  # anything else as it is
    with pytest.raises(FileNotFoundError) as raised:  # a builtin's, and a message of several lines
        next(iter(DataLoader(_Raising(FileNotFoundError("a.json: bad\nb.json: size 3: wrong")), num_workers=1)))
    assert user_message(raised.value) == "a.json: bad\nb.json: size 3: wrong"
