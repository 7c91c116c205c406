"""Which files a process tree opened, seen by the kernel (inotify): catches onnxruntime's C++ reads, which an
audit hook cannot see. Watches given files (their inodes: a hard link to them is caught too) and folders."""

from __future__ import annotations

import ctypes
import os
import struct

IN_ACCESS, IN_OPEN = 0x1, 0x20
IN_NONBLOCK = 0o4000
_libc = ctypes.CDLL(None, use_errno=True)


class OpenWatch:
    def __init__(self, paths: list[str]) -> None:
        self.fd = _libc.inotify_init1(IN_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.names: dict[int, str] = {}
        for path in paths:
            wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), IN_OPEN | IN_ACCESS)
            if wd >= 0:
                self.names[wd] = path

    def events(self) -> list[str]:
        found: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return found
            at = 0
            while at < len(data):
                wd, _mask, _cookie, size = struct.unpack_from("iIII", data, at)
                name = data[at + 16:at + 16 + size].rstrip(b"\0").decode(errors="replace")
                watched = self.names.get(wd, "?")
                if name or not os.path.isdir(watched):  # a folder's own event is a listing, not a read
                    found.append(os.path.join(watched, name) if name else watched)
                at += 16 + size

    def close(self) -> None:
        os.close(self.fd)
