"""Each pod's kubelet-written files, where `ip netns exec` finds them: /etc/netns/<netns>/.

`ip netns exec NS cmd` (and so `labctl exec`, and every container process the agent
starts) bind-mounts /etc/netns/NS/* over /etc/*, so a pod resolves names through
cluster DNS with its own resolv.conf and knows its hostname from its hosts file, as a
kubelet-managed pod does. Each directory carries its lab's name in an extended
attribute (`user.labctl.owner`; a file inside would be bind-mounted over /etc too), which
is how `down` and `clean` find them, never by name pattern, even after a reboot. Where
the file system has no user xattrs, a record under /run/labctl/.etcnetns/ stands in.
"""

from __future__ import annotations

import contextlib
import os
import shutil

from labctl import names
from labctl.cluster.services import DNS_SERVICE_INDEX, reserved_service_ip
from labctl.cluster.state import ClusterState
from labctl.kubelet.podfiles import hostname_and_domain, hosts_file, resolv_conf

ETC_NETNS = "/etc/netns"
OWNER_XATTR = "user.labctl.owner"
REGISTRY = os.path.join(names.STATE_ROOT, ".etcnetns")  # where xattrs are unsupported


def host_resolv_conf() -> str | None:
    try:
        with open("/etc/resolv.conf") as f:
            return f.read()
    except OSError:
        return None


def pod_files(state: ClusterState, node_resolv: str | None) -> dict[str, dict[str, str]]:
    """netns → {file name: content} for every pod (pure, given the node's resolv.conf)."""
    dns_ip = reserved_service_ip(state.lab.service_cidr, DNS_SERVICE_INDEX)
    domain = state.lab.cluster_domain
    out = {}
    for pod in state.pods:
        hostname, pod_domain = hostname_and_domain(pod, domain)
        out[pod.netns] = {
            "resolv.conf": resolv_conf(pod, dns_ip, domain, node_resolv).text,
            "hosts": hosts_file(pod.ip, hostname, pod_domain, pod.spec.host_aliases),
        }
    return out


def write(state: ClusterState, only: set[str] | None = None) -> None:
    """Write every pod's files (or those of the pod namespaces in `only`)."""
    for ns, files in pod_files(state, host_resolv_conf()).items():
        if only is not None and ns not in only:
            continue
        folder = os.path.join(ETC_NETNS, ns)
        os.makedirs(folder, exist_ok=True)
        _mark(folder, state.lab.name)
        for name, text in files.items():
            with open(os.path.join(folder, name), "w") as f:
                f.write(text)


def _mark(folder: str, lab: str) -> None:
    try:
        os.setxattr(folder, OWNER_XATTR, lab.encode())
    except OSError:
        os.makedirs(REGISTRY, exist_ok=True)
        with open(os.path.join(REGISTRY, os.path.basename(folder)), "w") as f:
            f.write(lab + "\n")


def owner_of(folder: str) -> str | None:
    try:
        return os.getxattr(folder, OWNER_XATTR).decode()
    except OSError:
        pass
    try:
        with open(os.path.join(REGISTRY, os.path.basename(folder))) as f:
            return f.read().strip()
    except OSError:
        return None


def remove(lab: str) -> int:
    """Drop every /etc/netns folder that this lab owns (idempotent)."""
    removed = 0
    try:
        names = os.listdir(ETC_NETNS)
    except FileNotFoundError:
        return 0
    for name in names:
        folder = os.path.join(ETC_NETNS, name)
        if owner_of(folder) == lab:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(REGISTRY, name))
            removed += 1
    return removed


def remove_pods(lab: str, netns_names: set[str]) -> None:
    """Drop the folders of these pod namespaces (pods that are gone), if the lab owns them."""
    for name in netns_names:
        folder = os.path.join(ETC_NETNS, name)
        if owner_of(folder) == lab:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(REGISTRY, name))


def owners() -> set[str]:
    """Labs that own a folder under /etc/netns (for `clean` and `status`)."""
    try:
        names = os.listdir(ETC_NETNS)
    except FileNotFoundError:
        return set()
    return {lab for name in names if (lab := owner_of(os.path.join(ETC_NETNS, name)))}
