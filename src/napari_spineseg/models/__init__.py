"""Model store: per-user cache of the task models (see :mod:`.store`)."""

from .store import (
    ENV_MODELS_DIR,
    InstalledModel,
    VerifyReport,
    install,
    is_installed,
    list_installed,
    model_folder,
    models_dir,
    prepare_custom,
    read_source,
    remove,
    task_dir,
    verify,
)

__all__ = [
    "ENV_MODELS_DIR",
    "InstalledModel",
    "VerifyReport",
    "install",
    "is_installed",
    "list_installed",
    "model_folder",
    "models_dir",
    "prepare_custom",
    "read_source",
    "remove",
    "task_dir",
    "verify",
]
