"""The engine's starting point: phase 0's prototype serving one request at a time.

- phase 0: the framework engine — no KV cache (every token re-runs the whole sequence), one kernel per
  operation launched from Python, a host synchronisation per token;
- phase 4: ``off`` — no scheduler: requests are served one after another, so a batch never forms and
  the weights are read once per token of every request;
- phases 1, 3 (block manager, paged attention) are unused without phase 4; phase 2 off (PyTorch RoPE);
  phase 5 off; phase 6's layout ``framework`` (all-gather everywhere) applies only where ``tp > 1`` runs,
  which needs phase 4: ``--impl framework --tp 2`` is refused, ``--impl framework --impl phase4=solution``
  runs it.

``make check-engine IMPL=framework`` runs the same end-to-end targets on this preset.
"""

IMPLS = {
    "phase0": "framework",
    "phase1": "auto",
    "phase2": "off",
    "phase3": "auto",
    "phase4": "off",
    "phase5": "off",
    "phase6": "framework",
}
