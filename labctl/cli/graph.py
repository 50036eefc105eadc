"""`labctl graph`: the lab as a diagram, from its files or from a running lab."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from labctl.cli.commands import Choice, argument, command, option
from labctl.cluster.state import ClusterState
from labctl.errors import LabctlError, NotFoundError

FORMATS = ("svg", "png", "dot", "mermaid")
EXTENSIONS = {".svg": "svg", ".png": "png", ".dot": "dot", ".gv": "dot", ".mmd": "mermaid",
              ".mermaid": "mermaid"}
NO_DOT = ("-o {fmt} needs Graphviz's `dot` command, which is not installed: install the "
          "`graphviz` package (apt-get install graphviz; scripts/install-deps.sh does); "
          "-o dot and -o mermaid work without it")


def output_format(fmt: str | None, out: str | None) -> str:
    """-o as given; else what -w's extension says; else dot."""
    if fmt:
        return fmt
    if out and out != "-":
        return EXTENSIONS.get(os.path.splitext(out)[1].lower(), "dot")
    return "dot"


def source_state(sources: tuple[str, ...], lab_name: str | None) -> ClusterState:
    """Compile the files named (a path that exists is a file), or read a running lab's
    state (named, or the only one)."""
    from labctl.lab import lifecycle, store

    if sources and all(os.path.exists(s) for s in sources):
        from labctl.cluster.compile import compile_files

        state, _warnings = compile_files(list(sources), addons=True)
        return state
    if len(sources) > 1:
        missing = [s for s in sources if not os.path.exists(s)]
        raise NotFoundError(f"no such file: {', '.join(missing)}")
    if sources:
        if sources[0] not in store.known_labs():
            labs = store.known_labs()
            raise NotFoundError(f"{sources[0]!r} is neither a file nor a running lab"
                                + (f"; labs: {', '.join(labs)}" if labs else "; no lab is up"))
        return store.state_of(sources[0])
    return store.state_of(lifecycle.pick_lab(lab_name))


def rendered(state: ClusterState, fmt: str, system: bool) -> bytes:
    """The diagram in `fmt`: dot and mermaid text from labctl.cluster.graph, svg and png
    drawn by Graphviz's `dot`."""
    from labctl.cluster.graph import render

    if fmt in ("dot", "mermaid"):
        return render(state, fmt, system).encode()
    dot = shutil.which("dot")
    if dot is None:
        raise LabctlError(NO_DOT.format(fmt=fmt))
    proc = subprocess.run([dot, f"-T{fmt}"], input=render(state, "dot", system).encode(),
                          capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise LabctlError(f"dot -T{fmt} failed (exit {proc.returncode}): "
                          f"{proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


@command(short_help="Draw the lab: nodes, bridges, pods, Services → their pods.")
@argument("sources", nargs=-1, metavar="[FILE...|LAB]")
@option("-o", "--output", "fmt", type=Choice(FORMATS),
        help="Format (default: from -w's extension — .svg .png .dot .gv .mmd — "
             "else dot). svg and png need Graphviz's `dot`.")
@option("-w", "--write", "out", metavar="OUT",
        help="Write the diagram to OUT instead of stdout.")
@option("--no-system", is_flag=True,
        help="Leave out the cluster's own objects (kube-system, default/kubernetes).")
@option("--lab", "lab_name", help="Which running lab (default: the only one).")
def graph(sources: tuple[str, ...], fmt: str | None, out: str | None, no_system: bool,
          lab_name: str | None) -> None:
    """Draw the lab: nodes with their cni0 bridge and pod CIDR, pods (name, IP),
    Services (type, VIP, ports, NodePorts, LoadBalancer IP) and an arrow from each
    Service to the pods its EndpointSlices name — dashed when the endpoint is not
    ready, dotted when it is terminating.

    FILE... (YAML files or folders) need no lab and no root: the diagram is what `up`
    would build. LAB (or no argument: the only lab) draws a running lab as it is now.

    \b
    Examples:
      labctl graph topologies/quickstart -w quickstart.svg
      labctl graph topologies/quickstart -o mermaid > quickstart.mmd
      labctl graph -o png -w now.png            # the running lab, readiness included
      labctl graph quickstart | dot -Tpdf > lab.pdf
    """
    fmt = output_format(fmt, out)
    state = source_state(sources, lab_name)
    data = rendered(state, fmt, system=not no_system)
    if out is None or out == "-":
        if fmt == "png" and sys.stdout.isatty():
            raise LabctlError("not writing a PNG to a terminal: use -w FILE.png or a pipe")
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        with open(out, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise LabctlError(f"cannot write {out}: {exc.strerror}") from None
    print(f"wrote {out} ({fmt})")
