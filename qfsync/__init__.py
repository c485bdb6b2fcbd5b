"""qfsync: keep a SQL database in step with Baidu Qianfan fine-tuning jobs.

`qfsync.sync(...)` runs a sync, `qfsync.jobs(...)` walks the API and `qfsync.tasks(...)` lists
jobs' tasks, as the command line does (see `qfsync.api`). They are loaded on first use, so that
`import qfsync` and the commands that need neither stay light.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("qfsync")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0"

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
