"""Score spam labels against the corpus's own: accuracy and the confusion counts.

python examples/labelling/score.py out/spam-labels.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import Counter


def main(path: str) -> None:
    pairs: Counter[tuple[str, str]] = Counter()
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            pairs[(row["truth"], str(row.get("label")))] += 1
    total = sum(pairs.values())
    right = sum(n for (truth, label), n in pairs.items() if truth == label)
    print(f"{total} labelled, accuracy {right / total:.1%}" if total else "nothing labelled yet")
    for (truth, label), n in sorted(pairs.items()):
        print(f"  truth {truth:4} labelled {label:4}: {n}")


if __name__ == "__main__":
    main(sys.argv[1])
