"""The API's request models and the OpenAPI document, without a server: text patterns, one branch per action.

The document and the server agreeing on every request is tested in tests/integration/test_api_models.py."""

from __future__ import annotations

import re
import sys

import pytest

from tests.support.api import DOC
from worker.config import NON_BLANK_TEXT, WHITESPACE_CLASS
from worker.http.models import ACTION_FIELDS, NO_NUL_TEXT


def _as_python(pattern: str) -> re.Pattern[str]:
    # The document's \\uXXXX escapes read the same in Python's re.
    return re.compile(pattern)


def test_the_whitespace_class_is_exactly_what_str_strip_removes() -> None:
    blank = _as_python(f"^[{WHITESPACE_CLASS}]$")
    for code in range(sys.maxunicode + 1):
        if 0xD800 <= code <= 0xDFFF:
            continue
        char = chr(code)
        assert bool(blank.match(char)) == char.isspace(), hex(code)


@pytest.mark.parametrize(
    ("text", "non_blank", "no_nul"),
    [
        ("homepage", True, True),
        ("  a ", True, True),
        ("", False, True),
        ("   ", False, True),
        ("\u3000\u2028\t\x1c", False, True),
        ("a\x00b", False, False),
        ("\x00", False, False),
        ("ünï ☃", True, True),
    ],
)
def test_text_patterns(text: str, non_blank: bool, no_nul: bool) -> None:
    assert bool(_as_python(NON_BLANK_TEXT).match(text)) is non_blank
    assert bool(_as_python(NO_NUL_TEXT).match(text)) is no_nul
    assert non_blank == (bool(text.strip()) and "\x00" not in text)


def test_one_branch_per_action_with_a_discriminator_and_exactly_its_fields() -> None:
    schemas = DOC["components"]["schemas"]
    request = schemas["AutoPromoteRequest"]
    assert request["discriminator"]["propertyName"] == "action"
    branches = {action: schemas[ref.rsplit("/", 1)[1]] for action, ref in request["discriminator"]["mapping"].items()}
    assert set(branches) == {"scan", "promote", "check", "rollback", "pause", "resume", "approve", "decline"}
    assert [b["$ref"] for b in request["oneOf"]] == [
        request["discriminator"]["mapping"][a]
        for a in ("check", "promote", "scan", "rollback", "pause", "resume", "approve", "decline")
    ]
    for action, branch in branches.items():
        assert branch["additionalProperties"] is False
        assert set(branch["properties"]) == ACTION_FIELDS[action], action
    assert set(branches["check"]["required"]) == {"action", "experimentName"}
    assert set(branches["rollback"]["required"]) == {"action", "promotionId", "reason"}
    assert set(branches["approve"]["required"]) == {"action", "approvalId"}
    assert set(branches["decline"]["required"]) == {"action", "approvalId", "reason"}
    assert set(branches["pause"]["required"]) == {"action", "experimentName"}
    assert set(branches["resume"]["properties"]) == {"action", "experimentName", "preset"}
    assert "experimentName" not in branches["scan"]["properties"]
