"""The product layer: `vap up` (the whole stack from one site file), the `vap` CLI, sample videos.

The only layer that imports services (tests/test_import_boundaries.py)."""
