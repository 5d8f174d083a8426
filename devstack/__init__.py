"""The local stack behind ``make run`` and the tests.

Each backing service is used where its configured URL answers; when nothing
listens there (and the URL points at this machine), an embedded one is
started on that address instead.
"""
