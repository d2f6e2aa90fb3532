"""``python -m titaninfer generate|chat|serve|quantize|bench|report …``: the ``titaninfer`` command."""

from shared.cli import main

raise SystemExit(main())
