"""schemathesis hooks for tests/test_contract.py (``SCHEMATHESIS_HOOKS``).

Whether a ``callback_url`` is accepted depends on what its host resolves to,
which no schema can say: a schema-valid URL the fuzzer makes up is pointed at
the test's allow-listed receiver host instead. A URL that breaks the schema is
left as it is, so negative cases stay negative.
"""

import re
from typing import Any

import schemathesis

RECEIVER = "http://127.0.0.1:9/convoq-contract-test"
# The schema's pattern as a JSON Schema (ECMA-262) validator reads it: Python's
# \s also matches the control characters \x1c-\x1f and \x85, ECMA's does not.
_ECMA_SPACE = "\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_VALID = re.compile(f"^[Hh][Tt][Tt][Pp][Ss]?://[^{_ECMA_SPACE}]+$")


def _point_at_receiver(item: Any) -> None:
    if isinstance(item, dict):
        url = item.get("callback_url")
        if isinstance(url, str) and 8 <= len(url) <= 2048 and _VALID.match(url):
            item["callback_url"] = RECEIVER


# before_call, not map_body: it also sees the coverage phase's cases, and
# schemathesis revalidates a case a hook edited.
@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    body = case.body
    _point_at_receiver(body)
    if isinstance(body, dict) and isinstance(body.get("jobs"), list):
        for job in body["jobs"]:
            _point_at_receiver(job)
