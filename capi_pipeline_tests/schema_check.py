"""Pinterest's schema checker (../shared/tools/capi_schema.py) for the bodies tests send."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

CHECKER_PATH = Path(__file__).resolve().parents[2] / "shared" / "tools" / "capi_schema.py"
MISSING_CHECKER = "../shared/tools/capi_schema.py is not beside the repository (CI lays it there)"


def load_checker() -> Any | None:
    """The checker module, or None when ../shared is absent."""
    if not CHECKER_PATH.exists():
        return None
    spec = importlib.util.spec_from_file_location("capi_schema", CHECKER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BodyChecker:
    """Collects the problems the checker finds in request bodies, with the count checked."""

    def __init__(self) -> None:
        self.module = load_checker()
        self.validator = self.module.load_validator() if self.module else None
        self.bodies = 0
        self.events = 0
        self.problems: list[str] = []

    def check(self, bodies: list[Any]) -> list[str]:
        """Check bodies (parsed JSON); returns this call's problems and keeps them all."""
        if self.module is None:
            return []
        found = []
        for body in bodies:
            self.bodies += 1
            self.events += len(body.get("data", [])) if isinstance(body, dict) else 0
            found += self.module.body_problems(body, self.validator)
        self.problems += found
        return found

    def report(self) -> str:
        return (f"{len(self.problems)} schema problems in {self.bodies} bodies: "
                + "; ".join(self.problems[:10]))
