"""Optional dependencies (pyproject.toml's extras): a command that needs one checks for it before it
does any work, so a missing extra is one line naming what to install, never a traceback."""

from __future__ import annotations

import importlib

from beaver_sim.errors import BeaverError


def require(module: str, extra: str) -> None:
    """Import `module`, or raise BeaverError saying which extra of beaver_sim brings it."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise BeaverError(f"needs the '{extra}' extra: pip install 'beaver_sim[{extra}]'") from None
