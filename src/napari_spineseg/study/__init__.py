"""Cohort review, Qt-free: a BIDS study segmented into a derivatives folder, triaged in
an HTML QC report, corrected case by case in napari (docs/cohort.md).

:mod:`.bids` (discovery, derivatives layout, resume, status), :mod:`.qc_report` (static
HTML report, manual-correction YAML), :mod:`.state` (the review queue kept in the
derivatives folder), :mod:`.commands` (``spineseg batch`` BIDS mode, ``spineseg qc``).
The napari entry point is ``napari_spineseg.cohort(viewer, path)`` (hence this package's
other name).
"""
