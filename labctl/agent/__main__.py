"""`python -m labctl.agent <state_dir>`: the per-lab agent (started by `labctl up`)."""

from __future__ import annotations

import sys

from labctl.agent.controller import main

if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m labctl.agent <state_dir>", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
