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
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

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
from labctl.net import ipvs as ipvs_net  # noqa: E402
from labctl.net import netfilter, netns  # noqa: E402
from labctl.proxy import base, iptables, ipvs, ipvs_render, nftables, sync  # noqa: E402

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


IPVS_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "sync-ipvs.json")
VARIANTS = ("nftables", "iptables-nft", "iptables-legacy", "ipvs")


def fresh_namespace() -> None:
    netns.ensure_run_dir()
    netns.delete(NS)
    subprocess.run(["ip", "netns", "add", NS], check=True)


def bare(argv: list[str], payload: str) -> float:
    """The tool alone, loading a payload in the namespace (the floor labctl is compared to)."""
    t = time.perf_counter()
    proc = subprocess.run(["ip", "netns", "exec", NS, *argv], input=payload, text=True,
                          capture_output=True, check=False)
    took = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} failed (exit {proc.returncode}): "
                         f"{proc.stderr.strip()}\ninput:\n{payload[:2000]}")
    return took


def bare_ipvs(update: Any) -> float:
    """IPVS mode's floor: the tools alone making the same change — kube-ipvs0 and its
    addresses (`ip -batch`), `ipset restore`, `ipvsadm -R`, `iptables-restore`."""
    t = time.perf_counter()
    batch = [f"link add {ipvs_render.DUMMY_DEVICE} type dummy"] if update.full else []
    batch += [f"addr add {ip}/32 dev {ipvs_render.DUMMY_DEVICE}" for ip in update.addresses_add]
    if batch:
        bare(["ip", "-batch", "-"], "\n".join(batch) + "\n")
    if update.ipset:
        bare(list(ipvs_net.IPSET_RESTORE), update.ipset)
    lines = update.ipvsadm_lines()
    if lines:  # -R, not the ipvsadm-restore script: it clears the table first
        bare(["ipvsadm", "-R"], "\n".join(lines) + "\n")
    if update.iptables:
        bare(["iptables-restore", "--noflush"], update.iptables)
    return time.perf_counter() - t


def _tool(variant: str) -> list[str]:
    if variant == "nftables":
        return ["nft", "-f", "-"]
    return [netfilter.iptables_binary(variant.split("-")[1], "iptables-restore"), "--noflush"]


def _load(variant: str, payload: str) -> float:
    if variant == "nftables":
        return netfilter.load_nft(NS, payload).seconds
    return netfilter.restore_iptables(NS, payload, variant.split("-")[1]).seconds


def measure(variant: str, svcs: list[ServiceState],
            slices: list[EndpointSlice]) -> dict[str, Any]:
    fresh_namespace()
    t = time.perf_counter()
    update = None
    with base.no_gc_pauses():  # as labctl's own sync does
        inp = base.build_input(CONFIG, svcs, slices)
        if variant == "ipvs":  # as sync.render_ipvs_sync does for a first load
            rs: Any = ipvs.render(inp)
            update = rs.update(None)
            update = replace(update, iptables=sync.with_jump_rules(
                update.iptables, rs.ensure_chains(), rs.jump_rules()))
            payload = ""
        else:
            rs = iptables.render(inp) if variant.startswith("iptables") else nftables.render(inp)
            payload = rs.payload()
    render_s = time.perf_counter() - t
    if update is not None:
        load_s = ipvs_net.apply(NS, "bench", ipvs_net.NodeLoad(NS, update),
                                ["iptables-restore", *netfilter.RESTORE_FLAGS]).seconds
    else:
        load_s = _load(variant, payload)
    whole = time.perf_counter() - t
    # The floor: the bare tool(s) loading the same change into an empty namespace.
    fresh_namespace()
    floor = bare_ipvs(update) if update is not None else bare(_tool(variant), payload)
    return {"render": render_s, "load": load_s, "whole": whole, "bare": floor,
            "rs": rs, "inp": inp}


def one_endpoint_change(variant: str, svcs: list[ServiceState],
                        slices: list[EndpointSlice], old_inp: base.ProxyInput,
                        old: Any) -> dict[str, float]:
    changed = list(slices)
    first = changed[0]
    ep = replace(first.endpoints[0], addresses=("10.244.250.250",))
    changed[0] = replace(first, endpoints=(ep, *first.endpoints[1:]))
    t = time.perf_counter()
    with base.no_gc_pauses():  # as sync.render_sync, given the node's previous NodeSync
        inp = base.build_input(CONFIG, svcs, changed, previous=old_inp)
        if variant == "ipvs":
            rs, update = ipvs.render_update(old, inp)
            payload = update.text()
        else:
            module = iptables if variant.startswith("iptables") else nftables
            rs, payload = module.render_update(old, inp)  # type: ignore[attr-defined]
    python = time.perf_counter() - t
    if variant == "ipvs":
        ipvs_net.apply(NS, "bench", ipvs_net.NodeLoad(NS, update),
                       ["iptables-restore", *netfilter.RESTORE_FLAGS])
    else:
        _load(variant, payload)
    whole = time.perf_counter() - t
    # Undo the change with the bare tool, then time the bare tool applying it again.
    if variant == "ipvs":  # undone the way labctl does it, then the bare tools redo it
        _rs, back = ipvs.render_update(rs, old_inp)
        ipvs_net.apply(NS, "bench", ipvs_net.NodeLoad(NS, back),
                       ["iptables-restore", *netfilter.RESTORE_FLAGS])
        floor = bare_ipvs(update)
    else:
        back = old.partial_payload(rs) if variant.startswith("iptables") \
            else old.update_payload(rs)
        bare(_tool(variant), back)
        floor = bare(_tool(variant), payload)
    return {"labctl": whole, "python": python, "bare": floor,
            "lines": payload.count("\n"), "services": len(svcs)}


def host_has_ipvs() -> bool:
    return os.path.exists("/proc/net/ip_vs") or subprocess.run(
        ["modprobe", "-q", "ip_vs"], check=False).returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,3000,10000")
    parser.add_argument("--modes", default="",
                        help=f"of {', '.join(VARIANTS)} (default: all this kernel has)")
    parser.add_argument("--json", help="also write the figures here (the VM run does)")
    parser.add_argument("--vm-sizes", default="100,1000", help="the sizes --vm measures")
    parser.add_argument("--vm", action="store_true",
                        help="measure ipvs inside Debian's stock kernel under qemu and "
                             f"write {os.path.relpath(IPVS_JSON)} (bench-sync shows it)")
    args = parser.parse_args()
    if args.vm:
        from vm import run_in_vm

        # Emulated, IPVS's netlink calls are slow: the VM measures the smaller sizes.
        return run_in_vm("bench-sync", __file__,
                         ["--modes", "ipvs", "--sizes", args.vm_sizes, "--json", IPVS_JSON],
                         IPVS_JSON)
    sizes = [int(x) for x in args.sizes.split(",")]
    variants = [v for v in (args.modes.split(",") if args.modes else VARIANTS)
                if args.modes or v != "ipvs" or host_has_ipvs()]
    results: dict[str, dict[int, dict[str, Any]]] = {v: {} for v in variants}
    changes: dict[str, dict[str, float]] = {}
    try:
        if "ipvs" in variants:  # the kernel loads ip_vs, its scheduler and ipset's
            measure("ipvs", *services(1))  # modules on first use: not a sync's cost
        for n in sizes:
            svcs, slices = services(n)
            for variant in variants:
                print(f"  {variant:16} {n:>6} services ...", end="", flush=True)
                r = measure(variant, svcs, slices)
                results[variant][n] = r
                print(f" render {r['render']:.3f}s, load {r['load']:.3f}s", flush=True)
                if n == sizes[-1]:
                    changes[variant] = one_endpoint_change(variant, svcs, slices,
                                                           r["inp"], r["rs"])
    finally:
        netns.delete(NS)
    figures = {"sizes": sizes, "kernel": os.uname().release,
               "emulated": os.environ.get("LABCTL_VM") == "1",
               "full": {v: {str(n): {k: results[v][n][k] for k in
                                     ("render", "load", "whole", "bare")} for n in sizes}
                        for v in variants},
               "change": changes}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    if "ipvs" not in variants:
        vm = load_vm(IPVS_JSON, sizes)
        if vm is not None:
            figures["full"]["ipvs"] = vm["full"]["ipvs"]
            figures["change"]["ipvs"] = vm["change"]["ipvs"]
            figures["ipvs_from_vm"] = True
            variants.append("ipvs")
            print(f"\n(ipvs: from {os.path.relpath(IPVS_JSON)}, measured in a VM under "
                  f"emulation (qemu TCG, kernel {vm['kernel']}): compare its ratios, not "
                  "its seconds, with the other modes')")
        else:
            print(f"\n(ipvs: this kernel has no IPVS; `make bench-sync-vm` measures it in a "
                  f"VM and writes {os.path.relpath(IPVS_JSON)}, which this table then shows)")
    report(figures, variants, sizes)
    plot(sizes, variants, figures)
    return 0


def load_vm(path: str, sizes: list[int]) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    full = data.get("full", {}).get("ipvs", {})
    if not any(str(n) in full for n in sizes) or "ipvs" not in data.get("change", {}):
        return None
    return data  # sizes the VM did not measure show as "-"


def report(figures: dict[str, Any], variants: list[str], sizes: list[int]) -> None:
    full, changes = figures["full"], figures["change"]
    print()
    print(f"{'mode':18}" + "".join(f"{n:>18}" for n in sizes) + "   (render + load, seconds)")
    for v in variants:
        cells = [full[v].get(str(n)) for n in sizes]
        print(f"{v:18}" + "".join(f"{c['render']:>8.3f}+{c['load']:<9.3f}" if c else
                                  f"{'-':>18}" for c in cells))
    print("\nlabctl's whole full sync vs its render time + the bare tool loading the same "
          "payload (target <= 1.1):")
    for v in variants:
        ratios = [(c["whole"] / (c["render"] + c["bare"])) if (c := full[v].get(str(n)))
                  else None for n in sizes]
        print(f"  {v:16}" + "".join(f"{r:>8.2f}" if r is not None else f"{'-':>8}"
                                    for r in ratios))
    print("\nOne endpoint changes at the largest size measured (kube-proxy's partial sync; "
          "labctl's whole update vs the bare tool, target <= 2x):")
    for v in variants:
        c = changes[v]
        print(f"  {v:16} at {int(c.get('services', sizes[-1])):>5} Services: labctl "
              f"{c['labctl']:.3f}s (Python {c['python']:.3f}s) vs bare "
              f"tool {c['bare']:.3f}s ({c['labctl'] / c['bare']:.1f}x, "
              f"{int(c['lines'])} lines sent)")
    big = str(sizes[-1])
    if "iptables-nft" in full and "nftables" in full:
        print(f"\nThe lesson: a full sync of {big} Services costs "
              f"{full['iptables-nft'][big]['load']:.1f}s with iptables-nft and "
              f"{full['nftables'][big]['load']:.1f}s with nft -f, and grows with every "
              "Service; kube-proxy therefore sends only what changed between syncs.")


def plot(sizes: list[int], variants: list[str], figures: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    full = figures["full"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in variants:
        got = [n for n in sizes if str(n) in full[v]]
        ax.plot(got, [full[v][str(n)]["load"] for n in got], "o-",
                label=f"{v} load" + (" (VM, emulated)" if v == "ipvs"
                                     and figures.get("ipvs_from_vm") else ""))
    if "iptables-nft" in full:
        ax.plot(sizes, [full["iptables-nft"][str(n)]["render"] for n in sizes], "k--",
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
    sys.exit(main())
