"""``python -m titaninfer generate|chat|serve|quantize|bench|report …`` (installed; ``python -m shared`` in a
checkout): the ``titaninfer`` command."""

from .cli import main

raise SystemExit(main())
