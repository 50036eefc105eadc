"""make bench-up: how fast labs come up and go down, against an `ip` script and Mininet.

For 10, 100 and 1000 pods (3 nodes, one Deployment behind a Service) it times, in one
run on this machine:
  * `labctl up` as a whole command (it returns when every pod's server listens) and
    its phases (compile, kernel, agent), then checks every pod answers on TCP;
  * `labctl down` as a whole command;
  * the same kernel objects built by a plain script with one `ip` process per object
    (the lines `labctl plan` prints), and torn down with one `ip netns del` per namespace;
  * Mininet building and stopping N hosts on one Linux bridge
    (`mn --topo single,N --switch lxbr --controller none --test none`).
Machines are noisy: read the ratios, not the absolute numbers. Timings are printed and
never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from labctl.net import netns  # noqa: E402

LABCTL = [sys.executable, "-m", "labctl.cli.main"]
LAB = "bench-up"


def manifest(pods: int) -> str:
    return f"""apiVersion: labctl/v1
kind: Lab
metadata: {{name: {LAB}}}
spec:
  nodes: [{{name: node1}}, {{name: node2}}, {{name: node3}}]
  podCIDRPerNode: 22   # 1000 pods on 3 nodes need more than a /24 each
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {pods}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: web
          ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def timed(argv: list[str], **kw: object) -> tuple[float, subprocess.CompletedProcess[str]]:
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore
    return time.perf_counter() - t, proc


def all_pods_answer(pods: list[dict]) -> int:
    """Connect to every pod's port 8080 from the first pod's namespace; count answers."""
    first = f"lc.{LAB}.pod.default.{pods[0]['metadata']['name']}"
    ok = 0
    with netns.entered(first):
        socks = []
        for _pod in pods:
            s = socket.socket()
            s.settimeout(5)
            socks.append(s)
    for s, pod in zip(socks, pods, strict=True):
        try:
            s.connect((pod["status"]["podIP"], 8080))
            s.sendall(b"ping\n")
            if b"pod=" in s.recv(4096):
                ok += 1
        except OSError:
            pass
        finally:
            s.close()
    return ok


def bench_labctl(path: str) -> dict[str, float]:
    up_s, proc = timed([*LABCTL, "up", path, "-q"])
    if proc.returncode:
        sys.exit(f"labctl up failed:\n{proc.stderr}")
    with open(f"/run/labctl/{LAB}/lab.json") as f:
        phases = json.load(f)["timings"]
    pods = json.loads(subprocess.run([*LABCTL, "get", "pods", "-o", "json", "--lab", LAB],
                                     capture_output=True, text=True, check=True).stdout)["items"]
    answered = all_pods_answer(pods)
    down_s, proc = timed([*LABCTL, "down", LAB, "-q"])
    if answered != len(pods):
        sys.exit(f"only {answered} of {len(pods)} pods answered")
    return {"up": up_s, "down": down_s, **phases}


def bench_ip_script(path: str) -> dict[str, float]:
    plan = subprocess.run([*LABCTL, "plan", path], capture_output=True, text=True, check=True)
    lines = []  # the ip/sysctl lines: the objects labctl's kernel phase builds
    for ln in plan.stdout.splitlines():
        if ln.startswith("#"):
            break  # what follows are the rule loads (timed separately by labctl)
        if ln.strip():
            lines.append(ln.split())
    t = time.perf_counter()
    for argv in lines:
        subprocess.run(argv, check=True, capture_output=True)
    up = time.perf_counter() - t
    namespaces = [argv[3] for argv in lines if argv[:3] == ["ip", "netns", "add"]]
    t = time.perf_counter()
    for name in namespaces:
        subprocess.run(["ip", "netns", "del", name], check=True)
    return {"up": up, "down": time.perf_counter() - t}


def bench_mininet(hosts: int) -> dict[str, float] | None:
    if not shutil.which("mn") or not shutil.which("brctl"):
        return None
    total, proc = timed(["mn", "--topo", f"single,{hosts}", "--switch", "lxbr",
                         "--controller", "none", "--test", "none"], timeout=1800)
    if proc.returncode:
        print(f"  mininet failed: {proc.stderr[-300:]}")
        return None
    return {"up+down": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--mininet-max", type=int, default=100,
                        help="largest size to run Mininet at (it is slow)")
    args = parser.parse_args()
    subprocess.run([*LABCTL, "down", LAB, "-q"], check=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            path = os.path.join(tmp, f"bench-{size}.yaml")
            with open(path, "w") as f:
                f.write(manifest(size))
            print(f"== {size} pods", flush=True)
            lab = bench_labctl(path)
            ip = bench_ip_script(path)
            mn = bench_mininet(size) if size <= args.mininet_max else None
            rows.append((size, lab, ip, mn))
            print(f"  labctl up {lab['up']:.3f}s (compile {lab['compile']:.3f}, kernel "
                  f"{lab['kernel']:.3f}, agent {lab['agent']:.3f}), down {lab['down']:.3f}s")
            print(f"  ip script up {ip['up']:.3f}s, down {ip['down']:.3f}s")
            if mn:
                print(f"  mininet up+down {mn['up+down']:.3f}s")
    print()
    print("pods  labctl-up  (kernel)  labctl-down  ip-script-up  kernel-vs-ip  "
          "mininet-up+down  vs-labctl-up+down")
    for size, lab, ip, mn in rows:
        mn_text = f"{mn['up+down']:.3f}s" if mn else "-"
        ratio = f"{mn['up+down'] / (lab['up'] + lab['down']):.1f}x" if mn else "-"
        print(f"{size:>4}  {lab['up']:>8.3f}s  ({lab['kernel']:.3f}s)  {lab['down']:>10.3f}s  "
              f"{ip['up']:>11.3f}s  {ip['up'] / lab['kernel']:>11.1f}x  {mn_text:>15}  "
              f"{ratio:>16}")
    print("\nTargets (2-core machine): 100 pods up <= 1.0 s, down <= 0.5 s, kernel phase "
          "<= 0.3 s and >= 3x faster than the ip script; up+down of 100 pods >= 5x faster "
          "than Mininet's 100 hosts; 1000 pods up <= 8 s.")


if __name__ == "__main__":
    main()
