"""The mass-deletion guard: a complete walk may mark only so many of a scope's jobs deleted.

An empty or short listing where thousands of jobs were listed yesterday is far more often a
wrong endpoint, account or permission than a real mass deletion, so beyond the limit the run
fails, deletes nothing, and says how to allow it.
"""

import re
from dataclasses import dataclass

DEFAULT = "50%"
# Deleting this many is always allowed under a share limit: a small scope that loses a few jobs
# is not the signature of a wrong account.
FREE_COUNT = 10
LIMIT = re.compile(r"(\d+)(%?)")


@dataclass(frozen=True)
class DeleteLimit:
    """At most `count` jobs, or at most `percent` of the scope's listed jobs (FREE_COUNT
    always allowed)."""

    count: int | None = None
    percent: int | None = None

    @classmethod
    def parse(cls, text: str) -> "DeleteLimit":
        """`200` (jobs) or `50%` (of the scope's listed jobs, 0 to 100)."""
        match = LIMIT.fullmatch(text.strip())
        if match is None or (match[2] and int(match[1]) > 100):
            raise ValueError(f"{text!r} is not a count such as 200 or a percentage such as 50%")
        number = int(match[1])
        return cls(percent=number) if match[2] else cls(count=number)

    def allows(self, gone: int, listed: int) -> bool:
        if self.count is not None:
            return gone <= self.count
        assert self.percent is not None
        return gone <= FREE_COUNT or gone * 100 <= self.percent * listed

    def __str__(self) -> str:
        return f"{self.count}" if self.count is not None else f"{self.percent}%"

    def refusal(self, gone: int, listed: int, scope: str) -> str | None:
        """The one-line refusal when `gone` of `listed` jobs would go, or None if allowed."""
        if self.allows(gone, listed):
            return None
        return (
            f"the complete walk would mark {gone} of the {listed} listed jobs of {scope} "
            f"deleted, more than --max-delete {self} allows; nothing was deleted. Check the "
            "endpoint, account and permissions; if the jobs really are gone, run again with "
            f"--max-delete {gone} (or --max-delete 100%)"
        )
