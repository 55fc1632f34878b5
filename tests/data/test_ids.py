"""ImageId validation: only one plain file name may name cache files."""

from __future__ import annotations

import pytest

from dualstage.data.ids import MAX_ID_LENGTH, check_image_id


@pytest.mark.parametrize(
    "value",
    ["1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819", "ID_0a1b", "  a b  ", "x" * MAX_ID_LENGTH],
)
def test_plain_ids_pass_stripped(value):
    assert check_image_id(value) == value.strip(" ")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("../../x", "absolute path|path separator|'..'"),
        ("..", r"contains '\.\.'"),
        ("/abs/x", "absolute path"),
        ("\\\\server\\share", "absolute path"),
        ("C:x", "drive letter"),
        ("sub/dir/x", "path separator"),
        ("sub\\x", "path separator"),
        ("a\x01b", "control character"),
        ("a\nb", "control character"),
        ("a\x00", "control character"),
        ("", "is empty"),
        ("   ", "is empty"),
        ("x" * 300, "300 characters long"),
        (".hidden", "starts with '.'"),
        (None, "not text"),
    ],
)
def test_hostile_ids_are_refused_with_the_reason(value, reason):
    with pytest.raises(ValueError, match=reason):
        check_image_id(value)


def test_message_is_printable_and_bounded():
    with pytest.raises(ValueError) as info:
        check_image_id("\x1b[31m" + "y" * 500)
    message = str(info.value)
    assert "\x1b" not in message and len(message) < 150
