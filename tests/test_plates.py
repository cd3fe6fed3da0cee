import pytest

from alpr.plates import (
    CLASSES,
    Layout,
    PlateFormatError,
    char_label,
    is_valid_plate,
    label_char,
    parse_layout,
    parse_plate,
)


def test_class_order_is_the_fixed_one():
    assert CLASSES[:10] == tuple("0123456789")
    assert CLASSES[10:15] == tuple("abcde")
    assert CLASSES[15:] == ("r_board", "r_m_n", "r_s_n", "l_board", "l_m_n", "l_s_n")


def test_parse_splits_region_type_serial():
    plate = parse_plate("12a3456")
    assert (plate.region, plate.vehicle_type, plate.serial) == ("12", "A", "3456")
    assert plate.text == "12A3456" and plate.sub_text == "12A"


@pytest.mark.parametrize("text, message", [
    ("12F3456", '"12F3456": vehicle type must be one of A-E'),
    ("1AA3456", "region must be two digits"),
    ("12A34X6", "serial must be four digits"),
    ("12A345", "expected 7 characters"),
])
def test_parse_errors_name_the_part(text, message):
    with pytest.raises(PlateFormatError) as error:
        parse_plate(text)
    assert message.replace('"', "'") in str(error.value).replace('"', "'")
    assert not is_valid_plate(text)


def test_char_labels_round_trip():
    assert [label_char(char_label(c)) for c in "0123456789ABCDE"] == list("0123456789ABCDE")
    with pytest.raises(PlateFormatError):
        char_label("F")


def test_layout_labels_and_aliases():
    assert Layout.ONE_ROW.board_label == "l_board" and Layout.TWO_ROW.sub_label == "r_s_n"
    assert parse_layout("long") is Layout.ONE_ROW and parse_layout("two-row") is Layout.TWO_ROW
    with pytest.raises(PlateFormatError, match="layout must be one of"):
        parse_layout("square")
