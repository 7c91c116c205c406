"""Which files a process tree opened, seen by the kernel (inotify): catches onnxruntime's C++ reads, which an
audit hook cannot see. Watches given files (their inodes: a hard link to them is caught too) and folders."""

from __future__ import annotations

import ctypes
import os
import struct

IN_ACCESS, IN_MODIFY, IN_ATTRIB, IN_OPEN = 0x1, 0x2, 0x4, 0x20
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x40, 0x80, 0x100, 0x200, 0x400, 0x800
READS = IN_OPEN | IN_ACCESS
CHANGES = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
IN_NONBLOCK = 0o4000
_libc = ctypes.CDLL(None, use_errno=True)


class OpenWatch:
    def __init__(self, paths: list[str], mask: int = READS) -> None:
        self.fd = _libc.inotify_init1(IN_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.names: dict[int, str] = {}
        for path in paths:
            wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
            if wd >= 0:
                self.names[wd] = path

    def events(self) -> list[str]:
        """Paths touched since the last call (a folder's own open is a listing, not a read: left out)."""
        return [path for path, _mask in self.masked_events()]

    def masked_events(self) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return found
            at = 0
            while at < len(data):
                wd, mask, _cookie, size = struct.unpack_from("iIII", data, at)
                name = data[at + 16:at + 16 + size].rstrip(b"\0").decode(errors="replace")
                watched = self.names.get(wd, "?")
                if name or not os.path.isdir(watched) or mask & CHANGES:
                    found.append((os.path.join(watched, name) if name else watched, mask))
                at += 16 + size

    def close(self) -> None:
        os.close(self.fd)
