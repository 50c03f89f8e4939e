"""The sections of the Review panel (:class:`napari_spineseg._qt.review_widget.ReviewWidget`).

One module per concern, each a mixin of the widget or a small Qt helper: ``layout``,
``panel``, ``corrections``, ``refine``, ``saving``, ``close_guard``, ``autosave``,
``prompts``, ``docking``, ``orientation``, ``sparkline``. The review logic itself is
Qt-free (:mod:`napari_spineseg.correction`).
"""
