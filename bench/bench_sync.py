"""make bench-sync: how kube-proxy's rule syncs grow with the number of Services.

For 100, 1 000, 3 000 and 10 000 Services with 2 endpoints each, in one run on this
machine, it measures a full sync from empty state in
  * nftables mode (`nft -f`),
  * iptables mode with iptables-nft-restore, and with iptables-legacy-restore,
split into render time (labctl's Python) and load time (the tool in the kernel), each
time in a fresh throw-away namespace. Then, at the largest size, one endpoint changes
and it measures the partial sync kube-proxy would do, the way labctl's sync_nodes does
it (build_input reusing the previous input, the mode's render_update re-rendering only
the changed Service): labctl's whole update (Python + load) against the bare tool
loading that same minimal transaction (target: <= 2x).

It prints a table and ratios, and writes bench/out/sync.png. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from labctl.cluster.state import PortAllocation, ServiceState  # noqa: E402
from labctl.model.objects import (  # noqa: E402
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    ObjectMeta,
    Service,
    ServicePort,
)
from labctl.net import netfilter, netns  # noqa: E402
from labctl.proxy import base, iptables, nftables  # noqa: E402

NS = "lc-bench-sync"
CONFIG = base.ProxyConfig(node_name="node1", node_ips=("172.18.0.2",),
                          cluster_cidr="10.244.0.0/16", service_cidr="10.96.0.0/12")


def services(n: int) -> tuple[list[ServiceState], list[EndpointSlice]]:
    svcs, slices = [], []
    for i in range(n):
        name = f"svc{i}"
        ip = str(ipaddress.IPv4Address("10.96.0.16") + i)
        spec = Service(ObjectMeta(name), ports=(ServicePort(80, name="http",
                                                            target_port=8080),))
        svcs.append(ServiceState(spec, ip, (PortAllocation("http", "TCP", 80),)))
        eps = tuple(Endpoint((str(ipaddress.IPv4Address("10.244.0.2") + 2 * i + k),),
                             EndpointConditions(True, True, False), node_name=f"node{k + 1}")
                    for k in range(2))
        slices.append(EndpointSlice(
            ObjectMeta(f"{name}-abcde", labels={"kubernetes.io/service-name": name}),
            endpoints=eps, ports=(EndpointPort(8080, "http"),)))
    return svcs, slices


def fresh_namespace() -> None:
    netns.ensure_run_dir()
    netns.delete(NS)
    subprocess.run(["ip", "netns", "add", NS], check=True)


def bare(argv: list[str], payload: str) -> float:
    """The tool alone, loading a payload in the namespace (the floor labctl is compared to)."""
    t = time.perf_counter()
    subprocess.run(["ip", "netns", "exec", NS, *argv], input=payload, text=True, check=True,
                   capture_output=True)
    return time.perf_counter() - t


def measure(mode: str, backend: str, svcs: list[ServiceState],
            slices: list[EndpointSlice]) -> dict[str, float]:
    fresh_namespace()
    t = time.perf_counter()
    with base.no_gc_pauses():  # as labctl's own sync does
        inp = base.build_input(CONFIG, svcs, slices)
        rs = iptables.render(inp) if mode == "iptables" else nftables.render(inp)
        payload = rs.payload()
    render_s = time.perf_counter() - t
    if mode == "iptables":
        loaded = netfilter.restore_iptables(NS, payload, backend)
        tool = [netfilter.iptables_binary(backend, "iptables-restore"), "--noflush"]
    else:
        loaded = netfilter.load_nft(NS, payload)
        tool = ["nft", "-f", "-"]
    whole = time.perf_counter() - t
    # The floor: the bare tool loading the same payload into an empty namespace.
    fresh_namespace()
    floor = bare(tool, payload)
    return {"render": render_s, "load": loaded.seconds, "whole": whole, "bare": floor,
            "rs": rs, "inp": inp}  # type: ignore[dict-item]


def one_endpoint_change(mode: str, backend: str, svcs: list[ServiceState],
                        slices: list[EndpointSlice], old_inp: base.ProxyInput,
                        old: object) -> dict[str, float]:
    changed = list(slices)
    first = changed[0]
    ep = replace(first.endpoints[0], addresses=("10.244.250.250",))
    changed[0] = replace(first, endpoints=(ep, *first.endpoints[1:]))
    t = time.perf_counter()
    with base.no_gc_pauses():  # as sync.render_sync, given the node's previous NodeSync
        inp = base.build_input(CONFIG, svcs, changed, previous=old_inp)
        module = iptables if mode == "iptables" else nftables
        rs, payload = module.render_update(old, inp)  # type: ignore[attr-defined]
    python = time.perf_counter() - t
    if mode == "iptables":
        netfilter.restore_iptables(NS, payload, backend)
        tool = [netfilter.iptables_binary(backend, "iptables-restore"), "--noflush"]
    else:
        netfilter.load_nft(NS, payload)
        tool = ["nft", "-f", "-"]
    whole = time.perf_counter() - t
    # Undo the change with the bare tool, then time the bare tool applying it again.
    back = (old.partial_payload(rs) if mode == "iptables"  # type: ignore[union-attr]
            else old.update_payload(rs))  # type: ignore[union-attr]
    bare(tool, back)
    return {"labctl": whole, "python": python, "bare": bare(tool, payload),
            "lines": payload.count("\n")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,3000,10000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    variants = [("nftables", ""), ("iptables", "nft"), ("iptables", "legacy")]
    results: dict[tuple[str, str, int], dict[str, float]] = {}
    changes = {}
    try:
        for n in sizes:
            svcs, slices = services(n)
            for mode, backend in variants:
                label = mode if mode == "nftables" else f"iptables-{backend}"
                print(f"  {label:16} {n:>6} services ...", end="", flush=True)
                r = measure(mode, backend, svcs, slices)
                results[(mode, backend, n)] = r
                print(f" render {r['render']:.3f}s, load {r['load']:.3f}s", flush=True)
                if n == sizes[-1]:
                    changes[label] = one_endpoint_change(mode, backend, svcs, slices,
                                                         r["inp"], r["rs"])
    finally:
        netns.delete(NS)
    print()
    print(f"{'mode':18}" + "".join(f"{n:>18}" for n in sizes) + "   (render + load, seconds)")
    for mode, backend in variants:
        label = mode if mode == "nftables" else f"iptables-{backend}"
        cells = [results[(mode, backend, n)] for n in sizes]
        print(f"{label:18}" + "".join(f"{c['render']:>8.3f}+{c['load']:<9.3f}" for c in cells))
    print("\nlabctl's whole full sync vs its render time + the bare tool loading the same "
          "payload (target <= 1.1):")
    for mode, backend in variants:
        label = mode if mode == "nftables" else f"iptables-{backend}"
        ratios = [results[(mode, backend, n)]["whole"] / (results[(mode, backend, n)]["render"]
                                                           + results[(mode, backend, n)]["bare"])
                  for n in sizes]
        print(f"  {label:16}" + "".join(f"{r:>8.2f}" for r in ratios))
    print(f"\nOne endpoint changes at {sizes[-1]} Services (kube-proxy's partial sync; "
          "labctl's whole update vs the bare tool, target <= 2x):")
    for label, c in changes.items():
        print(f"  {label:16} labctl {c['labctl']:.3f}s (Python {c['python']:.3f}s) vs bare "
              f"tool {c['bare']:.3f}s ({c['labctl'] / c['bare']:.1f}x, "
              f"{int(c['lines'])} lines sent)")
    big = sizes[-1]
    print(f"\nThe lesson: a full sync of {big} Services costs "
          f"{results[('iptables', 'nft', big)]['load']:.1f}s with iptables-nft and "
          f"{results[('nftables', '', big)]['load']:.1f}s with nft -f, and grows with every "
          "Service; kube-proxy therefore sends only what changed between syncs.")
    plot(sizes, variants, results)


def plot(sizes: list[int], variants: list[tuple[str, str]],
         results: dict[tuple[str, str, int], dict[str, float]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, backend in variants:
        label = mode if mode == "nftables" else f"iptables-{backend}"
        ax.plot(sizes, [results[(mode, backend, n)]["load"] for n in sizes], "o-",
                label=f"{label} load")
    ax.plot(sizes, [results[("iptables", "nft", n)]["render"] for n in sizes], "k--",
            label="labctl render (iptables)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Services (2 endpoints each)")
    ax.set_ylabel("seconds for one full sync")
    ax.set_title("kube-proxy full sync cost grows with the number of Services")
    ax.legend()
    os.makedirs("bench/out", exist_ok=True)
    fig.savefig("bench/out/sync.png", dpi=110, bbox_inches="tight")
    print("plot: bench/out/sync.png")


if __name__ == "__main__":
    main()
