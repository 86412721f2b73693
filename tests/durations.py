"""Rewrite tests/durations.json from a ``SENSITIVITY_TEST_TIMES`` file of a whole run.

    SENSITIVITY_TEST_TIMES=/tmp/times.txt python -m pytest -n 2
    python tests/durations.py /tmp/times.txt

Each test's setup + call + teardown seconds, kept for the tests over 0.5 s; tests/conftest.py
sends the modules to the xdist workers longest first by these (only their order matters).
"""

import collections
import json
import sys
from pathlib import Path


def main(times: str) -> None:
    total = collections.Counter()
    for line in Path(times).read_text().splitlines():
        seconds, _phase, node = line.split("\t")[:3]
        total[node] += float(seconds)
    kept = {node: round(s, 1) for node, s in sorted(total.items()) if s >= 0.5}
    out = Path(__file__).with_name("durations.json")
    out.write_text(json.dumps(kept, indent=0, sort_keys=True) + "\n")
    print(f"{out}: {len(kept)} of {len(total)} tests")


if __name__ == "__main__":
    main(sys.argv[1])
