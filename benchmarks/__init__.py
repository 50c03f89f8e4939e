"""Benchmarks of napari-spineseg (not installed with the package); see README.md."""
