"""The napari dock widgets (the only Qt code of the plugin).

Widgets are thin: every model operation goes through :mod:`napari_spineseg.api` and every
review operation through :mod:`napari_spineseg.correction`; long work runs on napari
thread workers (:mod:`._qt.workers`). ``napari_spineseg.review(viewer, path, ...)``
(:mod:`._qt.session`) drives the same widgets from a script or notebook.
"""
