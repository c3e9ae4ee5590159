"""RealFS that refuses to read one path the way the OS refuses after chmod 000. As root (CI runs as
root) chmod cannot deny a read, so the tests that check "an unreadable file is named in one line"
inject the refusal here instead, on real files otherwise."""

from __future__ import annotations

from beaver_sim.storage.fs import RealFS


class DeniedRealFS(RealFS):
    def __init__(self, denied: str) -> None:
        self.denied = denied

    def _check(self, path: str) -> None:
        if path == self.denied:
            raise PermissionError(13, "Permission denied", path)

    def read_bytes(self, path: str) -> bytes:
        self._check(path)
        return super().read_bytes(path)

    def read_written(self, path: str) -> bytes:
        self._check(path)
        return super().read_written(path)

    def listdir(self, path: str) -> list[str]:
        self._check(path)
        return super().listdir(path)
