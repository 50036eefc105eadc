"""Cluster DNS: CoreDNS's `kubernetes` plugin answers for a lab, served fast.

    from labctl.dns import DnsServer, Zone

    zone = Zone.from_state(state, ttl=5)            # pure: snapshot → answers
    zone.answer("web.default.svc.cluster.local", A)  # → Answer(rcode, answer, ...)
    server = DnsServer(zone, upstreams=["192.0.2.53:53"])
    server.serve_udp(udp_sock); server.serve_tcp(tcp_sock)
    server.update(Zone.from_state(new_state))      # atomic swap
    server.stop()

Modules: `zone` (pure: the records and CoreDNS's NXDOMAIN/NODATA rules), `records`
(record and answer values), `wire` (the DNS message format), `responder` (precomputed
replies and the slow path), `upstream` (forwarding within a deadline), `server`
(UDP/TCP threads), `snapshot` (a zone from manifest files, for `labctl dns serve`).
"""

from labctl.dns.records import RR, Answer
from labctl.dns.server import DnsServer, open_sockets
from labctl.dns.zone import Zone

__all__ = ["RR", "Answer", "DnsServer", "Zone", "open_sockets"]
