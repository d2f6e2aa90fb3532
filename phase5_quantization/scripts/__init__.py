"""Phase 5 scripts: ``gpu_run.sh`` (the device run), ``make_calibration`` (regenerates the calibration
text)."""
