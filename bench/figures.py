"""Figures a benchmark hands to the report besides printing them.

A benchmark calls :func:`record` for each figure it prints. Run alone, that does
nothing; run by ``python -m bench.report``, which names a file in
``CONVOQ_BENCH_FIGURES``, each call appends one JSON line there, and the
report's table gets one row per figure (:func:`read`).
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

FIGURES_FILE_ENV = "CONVOQ_BENCH_FIGURES"


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str = ""
    digits: int = 1

    def shown(self) -> str:
        number = f"{self.value:,.{self.digits}f}"
        return f"{number} {self.unit}".rstrip()


def record(name: str, value: float, unit: str = "", digits: int = 1) -> None:
    """Hand one figure to the report, when a report is collecting them."""
    path = os.environ.get(FIGURES_FILE_ENV)
    if not path:
        return
    line = {"name": name, "value": float(value), "unit": unit, "digits": digits}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


def read(path: Path) -> list[Figure]:
    """The figures recorded in ``path``, in order; none when it was never written."""
    if not path.exists():
        return []
    return [Figure(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    """``python -m bench.figures NAME VALUE [UNIT]``: record one figure from a shell."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.figures", description=main.__doc__)
    parser.add_argument("name")
    parser.add_argument("value", type=float)
    parser.add_argument("unit", nargs="?", default="")
    args = parser.parse_args()
    record(args.name, args.value, args.unit)


if __name__ == "__main__":
    main()
