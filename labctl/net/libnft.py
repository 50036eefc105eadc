"""nftables loads in-process, through libnftables — the library `nft` itself is a thin
shell around, so the same input gives the same transaction and the same errors — without
starting a process per node.

Namespaces: libnftables opens its netlink socket when a context is made, and a socket
belongs for life to the namespace its creating thread was in. So a context is made,
used and freed inside `netns.entered(ns)`, once per load: it can only ever act in `ns`
(the rule pyroute2 handles follow too; reference/anchors.md §5).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

from labctl.net import netns

NFT_CTX_DEFAULT = 0


@functools.cache
def _library() -> ctypes.CDLL | None:
    """libnftables, or None where only the `nft` program can be used."""
    name = ctypes.util.find_library("nftables") or "libnftables.so.1"
    try:
        lib = ctypes.CDLL(name)  # CDLL: the GIL is released during each call
    except OSError:
        return None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_run_cmd_from_filename.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_filename.restype = ctypes.c_int
    return lib


def available() -> bool:
    return _library() is not None


def run(ns: str, payload: str) -> str:
    """`nft -f -` of `payload` in namespace `ns`, in this process. Returns "" on success,
    else the error text nft would print (the transaction then changed nothing)."""
    lib = _library()
    assert lib is not None, "check available() first"
    # Read as a file (as `nft -f -` reads /dev/stdin): its errors then quote the right
    # line, which the library's buffer input gets wrong in nftables 1.0.6.
    fd = os.memfd_create("labctl-nft", os.MFD_CLOEXEC)
    try:
        os.write(fd, payload.encode())
        path = f"/proc/self/fd/{fd}"
        with netns.entered(ns):
            ctx = lib.nft_ctx_new(NFT_CTX_DEFAULT)  # its socket is made here, in `ns`
            if not ctx:
                return "libnftables: cannot make a context"
            try:
                lib.nft_ctx_buffer_output(ctx)
                lib.nft_ctx_buffer_error(ctx)
                rc = lib.nft_run_cmd_from_filename(ctx, path.encode())
                error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
            finally:
                lib.nft_ctx_free(ctx)
    finally:
        os.close(fd)
    if rc == 0:
        return ""
    return error.replace(path, "/dev/stdin").strip() or f"nft failed (error {rc})"
