"""The ``convoq`` command (``pip install "./client[cli]"``), also ``python -m
convoq_client.cli``. Its commands are in ``_cli``, on Typer and Rich, which the
client itself does without: without them, it says how to get them."""

import sys

MISSING = (
    "error: missing_dependency: the convoq command needs Typer and Rich: "
    'pip install "convoq-client[cli]" (or "./client[cli]")'
)


def main() -> None:
    try:
        from convoq_client._cli import app
    except ModuleNotFoundError as exc:
        if exc.name not in ("typer", "rich"):
            raise
        print(MISSING, file=sys.stderr)
        sys.exit(2)
    app(prog_name="convoq")


if __name__ == "__main__":
    main()
