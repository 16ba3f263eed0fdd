"""One named check's outcome (ok / warn / fail, with the fix): what each SSH stage of
``launcher/ssh.py`` reports, and what ``asyncddp doctor``'s report is made of."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OK", "WARN", "FAIL", "CheckResult"]

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class CheckResult:
    """One check: ``status`` is ok / warn / fail, ``fix`` says what to do when it is not ok."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}
