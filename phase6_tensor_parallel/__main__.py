"""``python -m phase6_tensor_parallel generate ...`` (see ``cli``; ranks run ``cli.run_rank``, which must be importable)."""

import sys

from phase6_tensor_parallel.cli import main

if __name__ == "__main__":
    sys.exit(main())
