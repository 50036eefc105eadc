"""Load and read netfilter rulesets inside a lab namespace with the real tools.

Like kube-proxy, rulesets go in atomically: one `iptables-restore --noflush` or one
`nft -f -` per node. The tool runs as a child forked from a thread that has entered the
node's namespace, so it acts there (a child inherits its parent thread's namespaces)
and no `ip netns exec` process is needed; `nft -f -` runs in-process through
libnftables (net/libnft) where the library is found. The host's own firewall is never
touched.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from labctl.errors import CapabilityError, LabctlError
from labctl.net import libnft, netns

BACKENDS = ("nft", "legacy")


class NetfilterError(LabctlError):
    pass


@dataclass(frozen=True)
class Loaded:
    tool: str
    seconds: float


def iptables_binary(backend: str, tool: str = "iptables") -> str:
    """iptables / iptables-restore / iptables-save of one backend ("nft" or "legacy")."""
    return f"{tool}-{backend}" if tool == "iptables" else tool.replace(
        "iptables", f"iptables-{backend}", 1)


@functools.cache
def system_iptables_backend() -> str:
    """The backend `iptables` points to on this system (Debian's alternatives); asked
    once per process (every sync would otherwise start `iptables --version`)."""
    path = shutil.which("iptables")
    if path is None:
        return "nft"
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return "legacy" if "legacy" in out.stdout else "nft"


def run_in(ns: str, argv: Sequence[str], stdin: str | None = None,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a tool inside a lab namespace (never the host's)."""
    with netns.entered(ns):
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              check=False)
    if check and proc.returncode != 0:
        raise NetfilterError(f"{' '.join(argv[:2])} in {ns} failed (exit {proc.returncode}): "
                             f"{(proc.stderr or proc.stdout).strip()[:2000]}")
    return proc


RESTORE_FLAGS = ("--noflush", "--counters", "-w")  # kube-proxy's, plus waiting for the lock
NFT_LOAD = ["nft", "-f", "-"]  # kube-proxy's nftables load (libnftables in-process here)


class Loads:
    """Tools loading rules in several namespaces at once, each (namespace, argv, input):
    `start` launches one at once — so a caller can render the next node's rules while
    this one's tool runs — and `wait` collects them all. Each is fed and waited for by
    its own thread, so no node waits for another's input, as each node's kube-proxy."""

    def __init__(self) -> None:
        self._started: list[tuple[str, threading.Thread]] = []
        self._results: list[tuple[str, float]] = []

    def start(self, ns: str, argv: Sequence[str], payload: str) -> None:
        """Start one load; `nft -f -` runs in-process (libnftables) where it can."""
        index = len(self._results)
        self._results.append(("", 0.0))
        t = time.perf_counter()
        if list(argv) == NFT_LOAD and libnft.available():
            def feed() -> None:  # the thread enters `ns` itself (see libnft)
                error = libnft.run(ns, payload)
                self._results[index] = (error and f"libnftables in {ns} failed: {error}",
                                        time.perf_counter() - t)
        else:
            with netns.entered(ns):
                proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)

            def feed() -> None:
                _stdout, stderr = proc.communicate(payload)
                self._results[index] = (
                    proc.returncode and f"{argv[0]} in {ns} failed (exit {proc.returncode}): "
                    f"{stderr.strip()}", time.perf_counter() - t)

        thread = threading.Thread(target=feed, name="load")
        thread.start()
        self._started.append((argv[0], thread))

    def wait(self) -> list[Loaded]:
        """Every tool's result, in the order started; the first failure raised (after
        all have finished)."""
        out = []
        failure = None
        for index, (tool, thread) in enumerate(self._started):
            thread.join()
            error, secs = self._results[index]
            out.append(Loaded(tool, secs))
            if error and failure is None:
                failure = NetfilterError(error[:2000])
        if failure:
            raise failure
        return out


def load_many(loads: Sequence[tuple[str, Sequence[str], str]]) -> list[Loaded]:
    """Run several loads at once (see Loads) and wait for them all."""
    running = Loads()
    for ns, argv, payload in loads:
        running.start(ns, argv, payload)
    return running.wait()


def restore_iptables(ns: str, payload: str, backend: str) -> Loaded:
    tool = iptables_binary(backend, "iptables-restore")
    t = time.perf_counter()
    run_in(ns, [tool, *RESTORE_FLAGS], stdin=payload)
    return Loaded(tool, time.perf_counter() - t)


def chains(ns: str, backend: str, table: str) -> list[str]:
    """The chains of one iptables table in a lab namespace, as iptables-save lists them."""
    out = run_in(ns, [iptables_binary(backend, "iptables-save"), "-t", table]).stdout
    return [line[1:].split()[0] for line in out.splitlines() if line.startswith(":")]


def iptables_commands(ns: str, rules: Sequence[Sequence[str]], backend: str,
                      ensure: bool = True) -> None:
    """Apply single iptables rules (kube-proxy's EnsureRule: add only when missing)."""
    tool = iptables_binary(backend)
    for argv in rules:
        args = list(argv)
        if ensure and ("-I" in args or "-A" in args):
            check = [("-C" if a in ("-I", "-A") else a) for a in args]
            if run_in(ns, [tool, "-w", *check], check=False).returncode == 0:
                continue
        # Removing (ensure=False): a rule or chain that is already gone is success.
        run_in(ns, [tool, "-w", *args], check=ensure)


def load_nft(ns: str, payload: str) -> Loaded:
    """One `nft -f -` in a namespace (in-process through libnftables where it can)."""
    t = time.perf_counter()
    if libnft.available():
        error = libnft.run(ns, payload)
        if error:
            raise NetfilterError(f"libnftables in {ns} failed: {error[:2000]}")
    else:
        run_in(ns, NFT_LOAD, stdin=payload)
    return Loaded("nft", time.perf_counter() - t)


def iptables_save(ns: str, backend: str) -> str:
    return run_in(ns, [iptables_binary(backend, "iptables-save")]).stdout


def nft_list(ns: str, *what: str) -> str:
    return run_in(ns, ["nft", "list", *(what or ("ruleset",))]).stdout


def check_tools(mode: str, backend: str) -> None:
    """Fail before anything is created when a mode's userland tool is missing."""
    needed = {"iptables": [iptables_binary(backend, "iptables-restore"),
                           iptables_binary(backend)],
              "nftables": ["nft"]}.get(mode, [])
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        raise CapabilityError(
            f"proxyMode {mode} needs {', '.join(missing)}, which is not installed; "
            "run scripts/install-deps.sh (Debian packages iptables, nftables)")
