"""Deterministic, lab-scoped names for everything labctl creates (pure).

Namespaces: `lc.<lab>.fabric`, `lc.<lab>.external`, `lc.<lab>.node.<node>`,
`lc.<lab>.pod.<namespace>.<pod>`. Lab, node and Kubernetes namespace names are
DNS-1123 labels (no dots), so the names cannot collide. Interface names stay within
the kernel's 15 characters by deriving them from the (unique) address they carry.
Ownership is never inferred from these names: every link and every namespace's `lo`
carries the ifalias `owner_mark(lab)`.
"""

from __future__ import annotations

import ipaddress
import os

STATE_ROOT = os.environ.get("LABCTL_STATE_ROOT", "/run/labctl")
MARK_PREFIX = "labctl:"
PREFIX = "lc."


def owner_mark(lab: str) -> str:
    return f"{MARK_PREFIX}{lab}"


def lab_of_mark(mark: str | None) -> str | None:
    if mark and mark.startswith(MARK_PREFIX):
        return mark[len(MARK_PREFIX):]
    return None


def fabric_ns(lab: str) -> str:
    return f"{PREFIX}{lab}.fabric"


def external_ns(lab: str) -> str:
    return f"{PREFIX}{lab}.external"


def node_ns(lab: str, node: str) -> str:
    return f"{PREFIX}{lab}.node.{node}"


def pod_ns(lab: str, namespace: str, pod: str) -> str:
    return f"{PREFIX}{lab}.pod.{namespace}.{pod}"


def veth_for(address: str) -> str:
    """`veth` + the address in hex: unique inside a lab, 12 characters."""
    return "veth" + f"{int(ipaddress.IPv4Address(address)):08x}"


def state_dir(lab: str) -> str:
    return os.path.join(STATE_ROOT, lab)


FABRIC_BRIDGE = "br0"
POD_BRIDGE = "cni0"
