"""Named network namespaces, created and entered from the calling thread (no fork).

A namespace is made by `unshare(CLONE_NEWNET)` in the calling thread, marked as
labctl's (ifalias `labctl:<lab>` on its `lo`) *before* it is given a name under
/run/netns, then the thread returns to where it was. If the process dies before the
name exists, the kernel frees the namespace on its own, so every named namespace
`clean` can see carries the ownership mark. Names under /run/netns are the ones
`ip netns` uses, so `ip netns exec` and `ip -n` work on every lab namespace.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from labctl.net import syscalls

RUN_NETNS = "/run/netns"


def path(name: str) -> str:
    return os.path.join(RUN_NETNS, name)


def thread_ns_path() -> str:
    return f"/proc/self/task/{_tid()}/ns/net"


def _tid() -> int:
    import threading

    return threading.get_native_id()


def ensure_run_dir() -> None:
    """Prepare /run/netns the way `ip netns add` does (a shared bind mount of itself)."""
    os.makedirs(RUN_NETNS, mode=0o755, exist_ok=True)
    try:
        syscalls.mount("", RUN_NETNS, "none", syscalls.MS_SHARED | syscalls.MS_REC)
    except OSError:
        syscalls.mount(RUN_NETNS, RUN_NETNS, "none", syscalls.MS_BIND | syscalls.MS_REC)
        syscalls.mount("", RUN_NETNS, "none", syscalls.MS_SHARED | syscalls.MS_REC)


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def list_names() -> list[str]:
    try:
        return sorted(os.listdir(RUN_NETNS))
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def entered(name_or_path: str) -> Iterator[None]:
    """Run the body with the calling thread inside a namespace, then return to the old one."""
    target = name_or_path if name_or_path.startswith("/") else path(name_or_path)
    fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _returning():
            syscalls.setns(fd, syscalls.CLONE_NEWNET)
            yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _returning() -> Iterator[None]:
    home = os.open(thread_ns_path(), os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield
    finally:
        try:
            syscalls.setns(home, syscalls.CLONE_NEWNET)
        finally:
            os.close(home)


@contextlib.contextmanager
def created(name: str) -> Iterator[None]:
    """Make a new namespace and run the body inside it; name it when the body succeeds.

    The body must mark the namespace (lo's ifalias) and may open sockets, which stay
    bound to the new namespace. If the body fails, the namespace is never named and
    vanishes with its last reference.
    """
    target = path(name)
    with _returning():
        syscalls.unshare(syscalls.CLONE_NEWNET)
        yield
        fd = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)
        os.close(fd)
        try:
            syscalls.mount(thread_ns_path(), target, "none", syscalls.MS_BIND)
        except BaseException:
            os.unlink(target)
            raise


def delete(name: str) -> bool:
    """Drop a named namespace (idempotent). Its links vanish when the kernel frees it."""
    target = path(name)
    with contextlib.suppress(OSError):
        syscalls.umount(target)
    try:
        os.unlink(target)
    except FileNotFoundError:
        return False
    return True
