"""Opening a file a user named (a config, a platform file, a list): never blocking, and only a regular file.

A path may name a FIFO with no writer, whose plain ``open`` waits for ever: in a reload that holds the reload lock,
so no later reload happens and the server cannot exit. A FIFO, a socket or a device is never a policy file, so it
is refused by name. The open itself is non-blocking; the file is read as usual once it is known to be regular.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from resolver.errors import ConfigError


def open_regular(path: str | os.PathLike[str], where: str) -> BinaryIO:
    """``path`` opened for reading in binary; ``ConfigError(where, reason)`` when it cannot be, or is not a regular
    file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise ConfigError(where, err.strerror or str(err)) from None
    except ValueError:  # a NUL byte in the path
        raise ConfigError(where, "not a usable path: contains a NUL byte") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(where, "Is a directory")
        if not stat.S_ISREG(mode):
            raise ConfigError(where, "not a regular file (a pipe, socket or device is never read)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a regular file (after symlinks); False, not an exception, for a path no file can have
    (too long, a NUL byte) or one the caller may not look into."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False
