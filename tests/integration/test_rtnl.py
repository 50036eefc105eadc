"""labctl's own rtnetlink batching against the real kernel: big batches on a stock
receive buffer (what a 1 000-Service IPVS lab puts on kube-ipvs0 in one flush)."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from labctl.net import netns
from labctl.net.rtnl import Rtnl

NS = "lc-it-rtnl"


@pytest.fixture
def scratch() -> Iterator[str]:
    netns.ensure_run_dir()
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


def test_thousands_of_requests_in_one_flush_on_a_default_receive_buffer(scratch: str) -> None:
    done: list[BaseException | None] = []

    def work() -> None:  # a handle acts in the namespace of the thread that opened it
        try:
            with netns.entered(scratch), Rtnl() as r:
                # a stock kernel's net.core.rmem_default, as a VM or laptop has it
                r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 212992)
                r.link_add("v0", "veth", peer="v1", what="ip link add v0 type veth")
                r.flush()
                index = r.link_index("v0")
                for i in range(3000):
                    r.addr_add(index, f"10.{i >> 8}.{i & 255}.1", 32, what=f"addr {i}")
                r.flush()
            done.append(None)
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            done.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert done == [None], done
    out = subprocess.run(["ip", "-n", scratch, "-o", "-4", "addr", "show", "dev", "v0"],
                         capture_output=True, text=True, check=True).stdout
    assert len(out.splitlines()) == 3000
