"""Which :class:`~napari_spineseg.engines.base.Engine` runs a task: backend name -> class.

A task names its backend (``TaskSpec.backend``); :func:`engine_class` finds the engine
class registered for it. The built-in engines are registered by dotted path, so nothing
(onnxruntime, nnU-Net, torch) is imported until a task of that backend runs. A new
backend is one module with an ``Engine`` subclass plus one line::

    register_engine("openvino", "my_lab.engines:OpenVinoModel")

(or the class itself). Lookups are thread-safe; a dotted path is imported once.
"""

from __future__ import annotations

import importlib
import re
import threading

from ..errors import TaskError
from .base import Engine

#: the engines shipped with the package, imported only when a task of theirs runs
BUILTIN_ENGINES: dict[str, str] = {
    "nnunet": "napari_spineseg.engines.nnunet:NnunetModel",
    "ivadomed_onnx": "napari_spineseg.engines.ivadomed_onnx:IvadomedOnnxModel",
    "totalspineseg": "napari_spineseg.engines.totalspineseg:TotalSpineSegModel",
}

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_registry: dict[str, str | type[Engine]] = dict(BUILTIN_ENGINES)
_lock = threading.Lock()


def register_engine(backend: str, engine: str | type[Engine], *, replace: bool = False) -> None:
    """Run tasks whose ``backend`` is ``backend`` with ``engine``.

    ``engine``: an :class:`Engine` subclass, or ``"package.module:Class"`` imported on
    first use. Registering another engine for a backend that has one is refused unless
    ``replace=True`` (two plugins must not silently take each other's tasks); registering
    the same one again is a no-op.
    """
    if not isinstance(backend, str) or not backend.strip() or backend != backend.strip():
        raise TaskError(f"engine backend must be a non-empty name without spaces, got {backend!r}")
    if isinstance(engine, str):
        if not _DOTTED.match(engine):
            raise TaskError(
                f"engine for backend {backend!r}: {engine!r} is not 'package.module:Class'"
            )
    elif not (isinstance(engine, type) and issubclass(engine, Engine)):
        raise TaskError(
            f"engine for backend {backend!r}: {engine!r} is not a subclass of "
            "napari_spineseg.engines.Engine (derive from it, implement load and predict)"
        )
    with _lock:
        old = _registry.get(backend)
        if old is not None and not replace and not _same(old, engine):
            raise TaskError(
                f"backend {backend!r} already runs with {_describe(old)}; pass replace=True "
                f"to run it with {_describe(engine)} instead"
            )
        _registry[backend] = engine


def unregister_engine(backend: str) -> None:
    """Forget a registered backend (its tasks then fail with "unknown backend"); a built-in
    backend goes back to its shipped engine."""
    with _lock:
        if backend in BUILTIN_ENGINES:
            _registry[backend] = BUILTIN_ENGINES[backend]
        else:
            _registry.pop(backend, None)


def registered_backends() -> tuple[str, ...]:
    """The backend names that have an engine, sorted."""
    with _lock:
        return tuple(sorted(_registry))


def engine_class(backend: str) -> type[Engine]:
    """The engine class registered for ``backend`` (a dotted path is imported now, once).

    Raises :class:`~napari_spineseg.errors.TaskError` for a backend with no engine, and
    for a registered path that cannot be imported or is not an ``Engine`` subclass.
    """
    with _lock:
        entry = _registry.get(backend)
        known = ", ".join(sorted(_registry))
    if entry is None:
        raise TaskError(
            f"no engine runs the backend {backend!r} (known: {known}); a plugin that "
            "provides it registers it with napari_spineseg.engines.register_engine"
        )
    if not isinstance(entry, str):
        return entry
    module_name, _, qualname = entry.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except ImportError as exc:
        raise TaskError(
            f"the engine for backend {backend!r} ({entry}) cannot be imported: {exc}; "
            "install the package that provides it"
        ) from exc
    except AttributeError:
        raise TaskError(
            f"the engine for backend {backend!r}: module {module_name} has no {qualname}"
        ) from None
    if not (isinstance(obj, type) and issubclass(obj, Engine)):
        raise TaskError(
            f"the engine for backend {backend!r} ({entry}) is not a subclass of "
            "napari_spineseg.engines.Engine"
        )
    with _lock:
        if _registry.get(backend) == entry:  # not replaced meanwhile: import only once
            _registry[backend] = obj
    return obj


def _describe(engine: str | type[Engine]) -> str:
    return engine if isinstance(engine, str) else f"{engine.__module__}:{engine.__qualname__}"


def _same(a: str | type[Engine], b: str | type[Engine]) -> bool:
    return _describe(a) == _describe(b)
