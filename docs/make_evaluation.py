"""Put the tables of ``nunet eval`` runs into docs/evaluation.md, between its markers.

Each marker pair ``<!-- nunet eval: SUITE/FILE -->`` ... ``<!-- end -->`` is replaced by FILE (a
markdown table ``nunet eval`` wrote) of the run given for SUITE, so the page shows what the command
printed, never a copy edited by hand.

Usage::

    nunet eval runs/heldout -m nunet-v11 -m nunet-fast
    nunet eval runs/dsb --suite dsb --data kaggle-dsbowl-2018-dataset-fixes -m nunet-v11 -m nunet-fast
    python docs/make_evaluation.py heldout=runs/heldout dsb=runs/dsb
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PAGE = Path(__file__).with_name("evaluation.md")
MARKER = re.compile(r"(<!-- nunet eval: (\w+)/([\w.]+) -->\n)(.*?)(<!-- end -->)", re.S)


def splice(page: str, runs: dict[str, Path]) -> str:
    """``page`` with every marked block replaced by the named file of its suite's run (others kept)."""

    def replace(match: re.Match) -> str:
        suite, name = match.group(2), match.group(3)
        if suite not in runs:
            return match.group(0)
        table = (runs[suite] / name).read_text(encoding="utf-8").strip()
        return f"{match.group(1)}{table}\n{match.group(5)}"

    return MARKER.sub(replace, page)


def main(arguments: list[str]) -> None:
    runs = dict(argument.split("=", 1) for argument in arguments)
    PAGE.write_text(splice(PAGE.read_text(encoding="utf-8"), {k: Path(v) for k, v in runs.items()}), encoding="utf-8")
    print(f"wrote {PAGE} from {', '.join(f'{k}: {v}' for k, v in runs.items())}")


if __name__ == "__main__":
    main(sys.argv[1:])
