"""The napari dock widgets (the only Qt code of the plugin).

Widgets are thin: long work is a Qt-free generator core of :mod:`napari_spineseg.jobs`
run on a napari thread worker (:mod:`._qt.workers`), and every review operation goes
through the layer's :class:`~napari_spineseg.correction.review.LayerReview`.
``napari_spineseg.review(viewer, path, ...)`` (:mod:`._qt.session`) drives the same
widgets from a script or notebook.
"""
