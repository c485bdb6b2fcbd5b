"""qfsync: keep a SQL database in step with Baidu Qianfan fine-tuning jobs.

`qfsync.sync(...)` runs a sync, `qfsync.jobs(...)` walks the API and `qfsync.tasks(...)` lists
jobs' tasks, as the command line does (see `qfsync.api`). They are loaded on first use, so that
`import qfsync` and the commands that need neither stay light.
"""

from typing import TYPE_CHECKING, Any

# The one place the version is written (pyproject.toml reads it from here): asking
# importlib.metadata instead cost every command about 30 ms at start-up.
__version__ = "0.1.0"

DEFAULT_DATABASE_URL = "sqlite:///qfsync.db"

if TYPE_CHECKING:
    from .api import Job, StopFlag, SyncResult, Task, jobs, sync, tasks

__all__ = ["Job", "StopFlag", "SyncResult", "Task", "__version__", "jobs", "sync", "tasks"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'qfsync' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
