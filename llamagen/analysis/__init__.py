"""Studies over trained models: guidance sweeps (and, later, codebook geometry and prefix attention)."""
