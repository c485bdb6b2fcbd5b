"""qfsync: keep a SQL database in step with Baidu Qianfan fine-tuning jobs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qfsync")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0"
