"""`labctl dns serve`: the lab's cluster DNS answers for a set of manifests, no lab needed."""

from __future__ import annotations

import signal
import time

from labctl.cli.commands import IntRange, PathArg, UsageError, group, option
from labctl.cli.common import print_warnings
from labctl.errors import LabctlError


@group()
def dns() -> None:
    """Cluster DNS: the answers CoreDNS (kubeadm's configuration) gives in a lab.

    \b
    Example:
      labctl dns serve -f topologies/quickstart --listen 127.0.0.1:5353
    """


@dns.command()
@option("-f", "--file", "files", multiple=True, required=True,
        type=PathArg(), help="Manifest file or folder (repeatable).")
@option("--listen", default="127.0.0.1:5353", show_default=True, metavar="IP:PORT",
        help="Address for UDP and TCP; port 0 picks a free one.")
@option("--zone", "domain", metavar="DOMAIN",
        help="Cluster domain [default: the Lab's, cluster.local].")
@option("--ttl", type=IntRange(0, 3600), default=5, show_default=True,
        help="TTL of the answers, in seconds.")
@option("--upstream", "upstreams", multiple=True, metavar="IP[:PORT]",
        help="Resolver for names outside the cluster (repeatable); without one "
             "they are answered SERVFAIL.")
def serve(files: tuple[str, ...], listen: str, domain: str | None, ttl: int,
          upstreams: tuple[str, ...]) -> None:
    """Serve the DNS answers the lab would give for the -f files, read as a snapshot.

    Services keep the clusterIPs they state, EndpointSlices are used as written (or
    derived from the Pods for selector Services), Pods keep their status.podIP.
    Runs until Ctrl-C or SIGTERM; no root needed for a port from 1024.

    \b
    Example:
      labctl dns serve -f topologies/quickstart --listen 127.0.0.1:5353 &
      dig @127.0.0.1 -p 5353 web.default.svc.cluster.local
      dig @127.0.0.1 -p 5353 +tcp SRV _http._tcp.web.default.svc.cluster.local
    """
    from labctl.dns.server import DnsServer, open_sockets
    from labctl.dns.snapshot import zone_from_files
    from labctl.dns.upstream import parse_address

    try:
        host, port = parse_address(listen, default_port=53, any_port=True)
    except ValueError as exc:
        raise UsageError(f"invalid value for --listen: {exc}; expected IP:PORT") from None
    for upstream in upstreams:
        try:
            parse_address(upstream)
        except ValueError as exc:
            raise UsageError(f"invalid value for --upstream: {exc}; expected IP[:PORT]"
                             ) from None
    zone, state, warnings = zone_from_files(files, domain, ttl, serial=int(time.time()),
                                            ns_ips=(host,))
    print_warnings(warnings)
    try:
        udp, tcp = open_sockets(host, port)
    except OSError as exc:
        raise LabctlError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    server = DnsServer(zone, upstreams)
    # SIGINT/SIGTERM are blocked in every thread (the server's inherit the mask) and
    # taken synchronously here: a clean stop, and no periodic wake-ups while serving.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        server.serve_udp(udp)
        server.serve_tcp(tcp)
        bound = udp.getsockname()[1]
        where = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        print(f"serving {zone.domain} ({len(state.services)} services) on {where} "
                   f"UDP+TCP, upstreams: {', '.join(upstreams) or 'none'}")
        signal.sigwait(stop_signals)
    finally:
        server.stop()  # the process ends right after: the mask can stay
