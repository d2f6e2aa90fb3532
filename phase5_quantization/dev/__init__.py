"""Phase 5's finished experiments that a GPU script still runs (not the product path): each module says which
script uses it and what the product keeps instead. The measurements: ``phase5_quantization/NOTES.md``."""
