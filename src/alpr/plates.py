"""The plate format, its two layouts and the model's class list.

A plate reads ``DDLDDDD``: a two-digit registration region, one vehicle-type
letter A-E and a four-digit serial. The "sub text" is ``DDL`` (``12A``), the
"main text" the serial (``3456``). A one-row plate ("long") prints them side by
side, a two-row plate ("regular") prints the sub text above the serial.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from alpr.errors import AlprError

DIGITS = tuple("0123456789")
VEHICLE_TYPES = tuple("ABCDE")

# Fixed order: class ids index into this tuple and every checkpoint stores it.
CLASSES: tuple[str, ...] = (
    *DIGITS,
    *(letter.lower() for letter in VEHICLE_TYPES),
    "r_board", "r_m_n", "r_s_n",
    "l_board", "l_m_n", "l_s_n",
)
CHARACTER_CLASSES = CLASSES[:15]


class Layout(str, Enum):
    ONE_ROW = "one-row"
    TWO_ROW = "two-row"

    @property
    def prefix(self) -> str:
        return "l" if self is Layout.ONE_ROW else "r"

    @property
    def board_label(self) -> str:
        return f"{self.prefix}_board"

    @property
    def sub_label(self) -> str:
        return f"{self.prefix}_s_n"

    @property
    def main_label(self) -> str:
        return f"{self.prefix}_m_n"


def check_classes(checkpoint, classes) -> None:
    """A checkpoint's stored class list must be this alpr's: class ids index into CLASSES."""
    if tuple(classes) != CLASSES:
        raise AlprError(f"{checkpoint}: trained for the classes {list(classes)}, not this alpr's {list(CLASSES)}")


BOARD_LABELS = {layout.board_label: layout for layout in Layout}
SUB_LABELS = {layout.sub_label: layout for layout in Layout}
MAIN_LABELS = {layout.main_label: layout for layout in Layout}


class PlateFormatError(AlprError, ValueError):
    """A text that is not ``DDLDDDD``; the message says which part is wrong."""


@dataclass(frozen=True)
class PlateText:
    region: str
    vehicle_type: str
    serial: str

    @property
    def text(self) -> str:
        return f"{self.region}{self.vehicle_type}{self.serial}"

    @property
    def sub_text(self) -> str:
        return f"{self.region}{self.vehicle_type}"

    def __str__(self) -> str:
        return self.text


def parse_plate(text: str) -> PlateText:
    """Parse ``"12A3456"`` (case-insensitive letter) into its parts or raise PlateFormatError."""
    if not isinstance(text, str):
        raise PlateFormatError(f"{text!r}: plate text must be a string")
    cleaned = text.replace(" ", "")
    if len(cleaned) != 7:
        raise PlateFormatError(f"{text!r}: expected 7 characters DDLDDDD (e.g. 12A3456), got {len(cleaned)}")
    region, vehicle_type, serial = cleaned[:2], cleaned[2].upper(), cleaned[3:]
    if not region.isdigit() or not region.isascii():
        raise PlateFormatError(f"{text!r}: region must be two digits 0-9, got {region!r}")
    if vehicle_type not in VEHICLE_TYPES:
        raise PlateFormatError(f"{text!r}: vehicle type must be one of A-E, got {vehicle_type!r}")
    if not serial.isdigit() or not serial.isascii():
        raise PlateFormatError(f"{text!r}: serial must be four digits 0-9, got {serial!r}")
    return PlateText(region, vehicle_type, serial)


def is_valid_plate(text: str) -> bool:
    try:
        parse_plate(text)
    except PlateFormatError:
        return False
    return True


def char_label(char: str) -> str:
    """The class label of one plate character: digits as is, letters lower-case."""
    label = char.lower()
    if label not in CHARACTER_CLASSES:
        raise PlateFormatError(f"{char!r}: not a plate character (0-9, A-E)")
    return label


def label_char(label: str) -> str:
    """The plate character a character class stands for (``"a"`` -> ``"A"``)."""
    if label not in CHARACTER_CLASSES:
        raise PlateFormatError(f"{label!r}: not a character class; expected one of {', '.join(CHARACTER_CLASSES)}")
    return label.upper()


def parse_layout(value: str) -> Layout:
    aliases = {"long": Layout.ONE_ROW, "regular": Layout.TWO_ROW}
    if value in aliases:
        return aliases[value]
    try:
        return Layout(value)
    except ValueError:
        allowed = ", ".join([*(layout.value for layout in Layout), *aliases])
        raise PlateFormatError(f"{value!r}: layout must be one of {allowed}") from None
