"""``python -m phase7_dit_parallel sample ...`` (see ``cli``; spawned ranks run ``cli.run_rank``)."""

import sys

from phase7_dit_parallel.cli import main

if __name__ == "__main__":
    sys.exit(main())
