"""Contract pending: see the phase issue."""
