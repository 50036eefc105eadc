"""The cluster DNS zone: CoreDNS's answers for a small cluster snapshot (pure, no I/O).

The table reproduces CoreDNS plugin/kubernetes test tables where they apply (cited as
handler_test, handler_case_test, kubernetes_apex_test, handler_pod_insecure_test,
reverse_test) on an IPv4 copy of their fixtures, plus the reference's NXDOMAIN/NODATA
rules (shared/reference/cluster-dns.md §2.2) and the search-path expansions a pod's
resolver tries (§6.2).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.cluster.state import PortAllocation, ServiceState
from labctl.dns.records import (
    AAAA,
    AXFR,
    CNAME,
    NOERROR,
    NS,
    NXDOMAIN,
    PTR,
    REFUSED,
    SERVFAIL,
    SOA,
    SRV,
    TXT,
    A,
    Answer,
)
from labctl.dns.snapshot import zone_from_files
from labctl.dns.zone import Zone, address_from_reverse, reverse_name
from labctl.model.objects import (
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    ObjectMeta,
    Service,
    ServicePort,
)

HINFO = 13

SNAPSHOT = """\
apiVersion: labctl/v1
kind: Lab
metadata: {name: dnszone}
---
apiVersion: v1
kind: Namespace
metadata: {name: testns}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: kubernetes, namespace: default}
spec:
  clusterIP: 10.96.0.1
  ports: [{name: https, port: 443}]
---
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: testns}
spec:
  clusterIP: 10.96.1.1
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: svc1-x1, namespace: testns, labels: {kubernetes.io/service-name: svc1}}
addressType: IPv4
endpoints:
  - {addresses: [10.244.9.10], hostname: ep1a, conditions: {ready: true}}
ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: svcempty, namespace: testns}
spec:
  clusterIP: 10.96.1.2
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: multi, namespace: testns}
spec:
  clusterIP: 10.96.1.3
  ports:
    - {name: http, port: 80}
    - {name: dns, port: 53, protocol: UDP}
    - {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: unnamed, namespace: testns}
spec:
  clusterIP: 10.96.1.4
  ports: [{port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: hdls1, namespace: testns}
spec:
  clusterIP: None
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: hdls1-x1, namespace: testns, labels: {kubernetes.io/service-name: hdls1}}
addressType: IPv4
endpoints:
  - addresses: [10.244.9.2]
  - {addresses: [10.244.9.3], conditions: {ready: true}}
  - {addresses: [10.244.9.4], hostname: dup-name}
  - {addresses: [10.244.9.5], hostname: dup-name}
  - {addresses: [10.244.9.6], hostname: sleepy, conditions: {ready: false}}
ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: hdlsprtls, namespace: testns}
spec: {clusterIP: None}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: hdlsprtls-x1, namespace: testns,
           labels: {kubernetes.io/service-name: hdlsprtls}}
addressType: IPv4
endpoints: [{addresses: [10.244.9.20]}]
---
apiVersion: v1
kind: Service
metadata: {name: hdlsunready, namespace: testns}
spec:
  clusterIP: None
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: hdlsunready-x1, namespace: testns,
           labels: {kubernetes.io/service-name: hdlsunready}}
addressType: IPv4
endpoints: [{addresses: [10.244.9.30], hostname: late, conditions: {ready: false}}]
ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: hdlspub, namespace: testns}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: hdlspub-x1, namespace: testns, labels: {kubernetes.io/service-name: hdlspub}}
addressType: IPv4
endpoints: [{addresses: [10.244.9.40], hostname: pub-0, conditions: {ready: false}}]
ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: testns}
spec:
  type: ExternalName
  externalName: ext.interwebs.test
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: ext-to-svc, namespace: testns}
spec: {type: ExternalName, externalName: svc1.testns.svc.cluster.local}
---
apiVersion: v1
kind: Service
metadata: {name: ext-ip, namespace: testns}
spec: {type: ExternalName, externalName: 1.2.3.4}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web, namespace: other}
spec:
  serviceName: web
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: other}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: front, namespace: other}
spec:
  clusterIP: 10.96.2.1
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: lone, namespace: other, labels: {app: lone}}
spec:
  containers: [{name: app, ports: [{containerPort: 8080}]}]
status: {podIP: 10.244.7.7}
---
apiVersion: v1
kind: Service
metadata: {name: lonely, namespace: other}
spec:
  clusterIP: 10.96.2.2
  selector: {app: lone}
  ports: [{port: 80, targetPort: 8080}]
"""

CL = "cluster.local."


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Zone, dict[str, str]]:
    """The zone `labctl dns serve -f snapshot.yaml` serves, and the StatefulSet pod IPs."""
    path = Path(tmp_path_factory.mktemp("dns")) / "snapshot.yaml"
    path.write_text(SNAPSHOT)
    zone, state, _warnings = zone_from_files([str(path)], serial=1499347823)
    ips = {p.name: p.ip for p in state.pods if p.namespace == "other" and p.name != "lone"}
    return zone, ips


def soa(zone: str = CL) -> str:
    return f"{zone} 5 IN SOA ns.dns.{zone} hostmaster.{zone} 1499347823 7200 1800 86400 5"


S1 = f"svc1.testns.svc.{CL}"
H1 = f"hdls1.testns.svc.{CL}"
NX, OK = NXDOMAIN, NOERROR

# (qname, qtype, rcode, answer records, additional records or None to skip the check)
CASES: list[tuple[str, int, int, set[str], set[str] | None]] = [
    # --- ClusterIP Services (handler_test "A Service", svcempty, SRV Service)
    (S1, A, OK, {f"{S1} 5 IN A 10.96.1.1"}, set()),
    (f"svcempty.testns.svc.{CL}", A, OK, {f"svcempty.testns.svc.{CL} 5 IN A 10.96.1.2"}, set()),
    (S1, SRV, OK, {f"{S1} 5 IN SRV 0 100 80 {S1}"}, {f"{S1} 5 IN A 10.96.1.1"}),
    (f"_http._tcp.{S1}", SRV, OK, {f"_http._tcp.{S1} 5 IN SRV 0 100 80 {S1}"},
     {f"{S1} 5 IN A 10.96.1.1"}),
    (f"_http._tcp.svcempty.testns.svc.{CL}", SRV, OK,
     {f"_http._tcp.svcempty.testns.svc.{CL} 5 IN SRV 0 100 80 svcempty.testns.svc.{CL}"},
     {f"svcempty.testns.svc.{CL} 5 IN A 10.96.1.2"}),
    (S1, AAAA, OK, set(), set()),  # handler_test: AAAA of an A-only Service is NODATA
    (f"ep1a.{S1}", A, OK, {f"ep1a.{S1} 5 IN A 10.244.9.10"}, set()),  # endpoint of ClusterIP
    (f"kubernetes.default.svc.{CL}", A, OK,
     {f"kubernetes.default.svc.{CL} 5 IN A 10.96.0.1"}, set()),
    # --- named and unnamed ports, protocols, de-duplication and weights
    (f"_http._tcp.unnamed.testns.svc.{CL}", SRV, NX, set(), None),  # unnamed: no SRV name
    (f"unnamed.testns.svc.{CL}", SRV, OK,
     {f"unnamed.testns.svc.{CL} 5 IN SRV 0 100 8080 unnamed.testns.svc.{CL}"}, None),
    (f"_dns._udp.multi.testns.svc.{CL}", SRV, OK,
     {f"_dns._udp.multi.testns.svc.{CL} 5 IN SRV 0 100 53 multi.testns.svc.{CL}"}, None),
    (f"_dns-tcp._tcp.multi.testns.svc.{CL}", SRV, OK,
     {f"_dns-tcp._tcp.multi.testns.svc.{CL} 5 IN SRV 0 100 53 multi.testns.svc.{CL}"}, None),
    (f"_dns._tcp.multi.testns.svc.{CL}", SRV, NX, set(), None),  # wrong protocol
    (f"_https._tcp.{S1}", SRV, NX, set(), None),  # no such port
    # three ports, two distinct (target, port) pairs: weight floor(100/3), one A
    (f"multi.testns.svc.{CL}", SRV, OK,
     {f"multi.testns.svc.{CL} 5 IN SRV 0 33 80 multi.testns.svc.{CL}",
      f"multi.testns.svc.{CL} 5 IN SRV 0 33 53 multi.testns.svc.{CL}"},
     {f"multi.testns.svc.{CL} 5 IN A 10.96.1.3"}),
    # --- headless (handler_test "A Service (Headless)", endpoint ip / name, SRV headless)
    (H1, A, OK, {f"{H1} 5 IN A 10.244.9.{i}" for i in (2, 3, 4, 5)}, set()),
    (f"10-244-9-2.{H1}", A, OK, {f"10-244-9-2.{H1} 5 IN A 10.244.9.2"}, set()),
    (f"dup-name.{H1}", A, OK, {f"dup-name.{H1} 5 IN A 10.244.9.4",
                               f"dup-name.{H1} 5 IN A 10.244.9.5"}, set()),
    (f"_http._tcp.{H1}", SRV, OK,
     {f"_http._tcp.{H1} 5 IN SRV 0 25 80 {n}.{H1}" for n in ("10-244-9-2", "10-244-9-3",
                                                             "dup-name")},
     {f"10-244-9-2.{H1} 5 IN A 10.244.9.2", f"10-244-9-3.{H1} 5 IN A 10.244.9.3",
      f"dup-name.{H1} 5 IN A 10.244.9.4", f"dup-name.{H1} 5 IN A 10.244.9.5"}),
    (f"bogusendpoint.{H1}", A, NX, set(), None),
    (f"bogusendpoint.svc0.testns.svc.{CL}", A, NX, set(), None),
    (f"sleepy.{H1}", A, NX, set(), None),  # not ready: not published
    (f"hdlsprtls.testns.svc.{CL}", A, OK,
     {f"hdlsprtls.testns.svc.{CL} 5 IN A 10.244.9.20"}, set()),
    (f"10-244-9-20.hdlsprtls.testns.svc.{CL}", A, OK,
     {f"10-244-9-20.hdlsprtls.testns.svc.{CL} 5 IN A 10.244.9.20"}, set()),
    (f"hdlsprtls.testns.svc.{CL}", SRV, OK, set(), set()),  # no ports: no SRV, NODATA
    (f"hdlsunready.testns.svc.{CL}", A, NX, set(), None),  # no ready endpoint
    (f"hdlspub.testns.svc.{CL}", A, OK, {f"hdlspub.testns.svc.{CL} 5 IN A 10.244.9.40"}, set()),
    (f"pub-0.hdlspub.testns.svc.{CL}", A, OK,
     {f"pub-0.hdlspub.testns.svc.{CL} 5 IN A 10.244.9.40"}, set()),
    # --- StatefulSet behind its governing headless Service; selector ClusterIP
    (f"web-0.web.other.svc.{CL}", A, OK, {f"web-0.web.other.svc.{CL} 5 IN A {{web-0}}"}, set()),
    (f"web.other.svc.{CL}", A, OK, {f"web.other.svc.{CL} 5 IN A {{web-0}}",
                                    f"web.other.svc.{CL} 5 IN A {{web-1}}"}, set()),
    (f"_http._tcp.web.other.svc.{CL}", SRV, OK,
     {f"_http._tcp.web.other.svc.{CL} 5 IN SRV 0 50 8080 web-{i}.web.other.svc.{CL}"
      for i in (0, 1)},
     {f"web-0.web.other.svc.{CL} 5 IN A {{web-0}}", f"web-1.web.other.svc.{CL} 5 IN A {{web-1}}"}),
    (f"front.other.svc.{CL}", A, OK, {f"front.other.svc.{CL} 5 IN A 10.96.2.1"}, set()),
    # the pod hostname names the endpoint only under the Service its subdomain names
    (f"web-0.front.other.svc.{CL}", A, NX, set(), None),
    (f"{{web-0-dashed}}.front.other.svc.{CL}", A, OK,
     {f"{{web-0-dashed}}.front.other.svc.{CL} 5 IN A {{web-0}}"}, set()),
    # --- ExternalName (handler_test CNAME External, External To Internal Service)
    (f"ext.testns.svc.{CL}", CNAME, OK,
     {f"ext.testns.svc.{CL} 5 IN CNAME ext.interwebs.test."}, set()),
    (f"ext.testns.svc.{CL}", A, OK,  # without upstreams the CNAME stands alone
     {f"ext.testns.svc.{CL} 5 IN CNAME ext.interwebs.test."}, set()),
    (f"ext-to-svc.testns.svc.{CL}", A, OK,
     {f"ext-to-svc.testns.svc.{CL} 5 IN CNAME {S1}", f"{S1} 5 IN A 10.96.1.1"}, set()),
    (f"ext.testns.svc.{CL}", SRV, OK, set(), set()),  # SRV on an ExternalName: NODATA
    (f"endpoint.ext.testns.svc.{CL}", CNAME, NX, set(), None),
    (f"_http._tcp.ext.testns.svc.{CL}", SRV, NX, set(), None),
    (f"ext-ip.testns.svc.{CL}", A, NX, set(), None),  # an IP literal is ignored
    # --- apex, SOA, NS, schema version (kubernetes_apex_test, handler_test TXT Schema)
    (CL, SOA, OK, {soa()}, set()),
    (CL, NS, OK, {f"{CL} 5 IN NS kube-dns.kube-system.svc.{CL}"},
     {f"kube-dns.kube-system.svc.{CL} 5 IN A 10.96.0.10"}),
    (CL, HINFO, OK, set(), set()),
    (CL, A, OK, set(), set()),
    (f"ns.dns.{CL}", A, OK, {f"ns.dns.{CL} 5 IN A 10.96.0.10"}, set()),
    (f"dns-version.{CL}", TXT, OK, {f'dns-version.{CL} 28800 IN TXT "1.1.0"'}, set()),
    (f"dns-version.{CL}", A, OK, set(), set()),
    (S1, SOA, OK, set(), set()),  # SOA below the apex: NODATA
    (S1, TXT, OK, set(), set()),
    (f"nope.testns.svc.{CL}", TXT, NX, set(), None),
    (S1, PTR, OK, set(), set()),
    (S1, CNAME, OK, set(), set()),
    (S1, HINFO, OK, set(), set()),  # "fake A lookup"
    (f"nope.testns.svc.{CL}", HINFO, NX, set(), None),
    # --- the query grammar: NODATA vs NXDOMAIN (handler_test, reference §2.2)
    (f"svc.{CL}", A, OK, set(), set()),
    (f"pod.{CL}", A, OK, set(), set()),
    (f"testns.svc.{CL}", A, OK, set(), set()),
    (f"nons.svc.{CL}", A, NX, set(), None),
    (f"svc.{CL}", NS, OK, set(), set()),
    (f"testns.svc.{CL}", NS, OK, set(), set()),
    (f"foo.{CL}", NS, NX, set(), None),
    (f"foo.svc.{CL}", NS, NX, set(), None),
    (f"svc0.testns.svc.{CL}", A, NX, set(), None),
    (f"svc0.testns.svc.{CL}", AAAA, NX, set(), None),
    (f"svc0.svc-nons.svc.{CL}", A, NX, set(), None),
    (f"foo.bar.{CL}", A, NX, set(), None),  # second label from the zone not svc/pod
    (f"a.b.c.d.e.svc.{CL}", A, NX, set(), None),  # query too long
    # --- wrong search-path expansions (ndots:5): all NXDOMAIN so +search moves on
    (f"kubernetes.default.testns.svc.{CL}", A, NX, set(), None),
    (f"kubernetes.default.svc.testns.svc.{CL}", A, NX, set(), None),
    (f"kubernetes.default.svc.svc.{CL}", A, NX, set(), None),
    (f"kubernetes.default.svc.{CL}{CL}", A, NX, set(), None),
    (f"svc1.svc.{CL}", A, NX, set(), None),
    (f"_http._tcp.svc1.testns.svc.testns.svc.{CL}", SRV, NX, set(), None),
    # --- pods insecure (handler_pod_insecure_test)
    (f"10-244-7-7.other.pod.{CL}", A, OK, {f"10-244-7-7.other.pod.{CL} 5 IN A 10.244.7.7"},
     set()),
    (f"172-0-0-2.testns.pod.{CL}", A, OK, {f"172-0-0-2.testns.pod.{CL} 5 IN A 172.0.0.2"},
     set()),
    (f"10-244-7-7.nons.pod.{CL}", A, NX, set(), None),  # namespace must exist
    (f"not-an-ip.other.pod.{CL}", A, NX, set(), None),
    (f"other.pod.{CL}", A, OK, set(), set()),
    # --- reverse (reverse_test): a Service address first, else every endpoint
    ("1.1.96.10.in-addr.arpa.", PTR, OK, {f"1.1.96.10.in-addr.arpa. 5 IN PTR {S1}"}, set()),
    ("10.0.96.10.in-addr.arpa.", PTR, OK,
     {f"10.0.96.10.in-addr.arpa. 5 IN PTR kube-dns.kube-system.svc.{CL}"}, set()),
    ("2.9.244.10.in-addr.arpa.", PTR, OK,
     {f"2.9.244.10.in-addr.arpa. 5 IN PTR 10-244-9-2.{H1}"}, set()),
    ("4.9.244.10.in-addr.arpa.", PTR, OK,
     {f"4.9.244.10.in-addr.arpa. 5 IN PTR dup-name.{H1}"}, set()),
    ("7.7.244.10.in-addr.arpa.", PTR, OK,  # the pod's stated podIP, in the derived slice
     {f"7.7.244.10.in-addr.arpa. 5 IN PTR 10-244-7-7.lonely.other.svc.{CL}"}, set()),
    ("9.9.9.9.in-addr.arpa.", PTR, NX, set(), None),
    ("1.1.96.10.in-addr.arpa.", A, NX, set(), None),
    ("in-addr.arpa.", SOA, OK, {soa("in-addr.arpa.")}, set()),
    # --- letter case (handler_case_test): owners echo the query, zone part too
    ("SvC1.TeStNs.SvC.cLuStEr.LoCaL.", A, OK, {"SvC1.TeStNs.SvC.cLuStEr.LoCaL. 5 IN A 10.96.1.1"},
     set()),
    ("_HtTp._TcP.sVc1.TeStNs.SvC.cLuStEr.LoCaL.", SRV, OK,
     {"_HtTp._TcP.sVc1.TeStNs.SvC.cLuStEr.LoCaL. 5 IN SRV 0 100 80 svc1.testns.svc.cLuStEr.LoCaL."},
     {"svc1.testns.svc.cLuStEr.LoCaL. 5 IN A 10.96.1.1"}),
    ("not-a-service.testns.svc.ClUsTeR.lOcAl.", A, NX, set(), None),
    ("Cluster.local.", SOA, OK, {soa("Cluster.local.")}, set()),
    ("WEB-0.Web.OTHER.svc.cluster.local.", A, OK,
     {"WEB-0.Web.OTHER.svc.cluster.local. 5 IN A {web-0}"}, set()),
]


def _ids(case: tuple) -> str:
    return f"{case[0]}/{case[1]}"


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_answers(snapshot: tuple[Zone, dict[str, str]], case: tuple) -> None:
    zone, ips = snapshot
    qname, qtype, rcode, answer, additional = case

    def fill(line: str) -> str:
        return line.replace("{web-0-dashed}", ips["web-0"].replace(".", "-")) \
            .replace("{web-0}", ips["web-0"]).replace("{web-1}", ips["web-1"])

    qname = fill(qname)
    answer = {fill(line) for line in answer}
    additional = None if additional is None else {fill(line) for line in additional}
    got = zone.answer(qname, qtype)
    assert got.rcode == rcode, got.text()
    assert got.authoritative
    assert {rr.text() for rr in got.answer} == answer, got.text()
    assert len(got.answer) == len(answer), "duplicate records"
    if additional is not None:
        assert {rr.text() for rr in got.additional} == additional, got.text()
    if rcode != NOERROR or not answer:
        # Every negative answer carries the SOA of the zone, spelled as asked.
        zq = qname[len(qname) - len(zone.zone_of(qname) or ""):]
        assert [rr.text() for rr in got.authority] == [soa(zq)], got.text()
    else:
        assert got.authority == ()


def test_the_table_is_large_and_covers_every_kind(snapshot: tuple[Zone, dict[str, str]]) -> None:
    assert len(CASES) >= 45
    assert {c[1] for c in CASES} >= {A, AAAA, SRV, PTR, TXT, SOA, NS, CNAME}
    assert {c[2] for c in CASES} == {NOERROR, NXDOMAIN}


def test_external_targets_are_chased_and_outside_names_forwarded(
        snapshot: tuple[Zone, dict[str, str]]) -> None:
    zone, _ = snapshot
    ext = zone.answer(f"ext.testns.svc.{CL}", A)
    assert ext.chase == ("ext.interwebs.test.", A)
    assert zone.answer(f"ext-to-svc.testns.svc.{CL}", A).chase is None
    outside = zone.answer("example.org.", A)
    assert outside == Answer(SERVFAIL, authoritative=False, forward=True)
    assert zone.answer("9.9.9.9.in-addr.arpa.", PTR).fallthrough
    assert not zone.answer(f"svc0.testns.svc.{CL}", A).fallthrough
    assert zone.answer(CL, AXFR).rcode == REFUSED


def test_ttl_is_configurable_and_soa_ttl_capped() -> None:
    svc = ServiceState(Service(ObjectMeta("a", "ns1"), ports=(ServicePort(80, "http"),)),
                       "10.96.5.5", (PortAllocation("http", "TCP", 80),))
    zone = Zone.build([svc], [], [], ["ns1"], "example.lab", ttl=600)
    got = zone.answer("a.ns1.svc.example.lab", A)
    assert [rr.text() for rr in got.answer] == ["a.ns1.svc.example.lab. 600 IN A 10.96.5.5"]
    neg = zone.answer("b.ns1.svc.example.lab", A)
    assert neg.authority[0].ttl == 300 and neg.authority[0].data[-1] == 600
    with pytest.raises(ValueError):
        Zone.build([svc], [], [], ["ns1"], ttl=3601)


def _ipv6_headless_zone() -> Zone:
    """CoreDNS handler_test's hdls1 fixture, IPv6 addresses included."""
    svc = ServiceState(Service(ObjectMeta("hdls1", "testns"), cluster_ip="None"), "None")
    eps = EndpointSlice(
        ObjectMeta("hdls1-slice1", "testns", {"kubernetes.io/service-name": "hdls1"}),
        "IPv4",
        (Endpoint(("172.0.0.2",)), Endpoint(("172.0.0.3",)),
         Endpoint(("172.0.0.4",), hostname="dup-name"),
         Endpoint(("172.0.0.5",), hostname="dup-name")),
        (EndpointPort(80, "http", "TCP"),))
    eps6 = EndpointSlice(
        ObjectMeta("hdls1-slice2", "testns", {"kubernetes.io/service-name": "hdls1"}),
        "IPv6",
        (Endpoint(("5678:abcd::1",)), Endpoint(("5678:abcd::2",)),
         Endpoint(("5678:abcd::3",), EndpointConditions(ready=False))),
        (EndpointPort(80, "http", "TCP"),))
    return Zone.build([svc], [eps, eps6], [], ["testns"])


def test_coredns_headless_srv_with_ipv6_endpoints() -> None:
    # handler_test "SRV Service (Headless)": 6 addresses → weight 16, one SRV per name.
    zone = _ipv6_headless_zone()
    got = zone.answer("_http._tcp.hdls1.testns.svc.cluster.local.", SRV)
    targets = ["172-0-0-2", "172-0-0-3", "5678-abcd--1", "5678-abcd--2", "dup-name"]
    assert sorted(rr.text() for rr in got.answer) == sorted(
        f"_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 "
        f"{t}.hdls1.testns.svc.cluster.local." for t in targets)
    assert sorted(rr.text() for rr in got.additional) == sorted([
        "172-0-0-2.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2",
        "172-0-0-3.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.3",
        "5678-abcd--1.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1",
        "5678-abcd--2.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2",
        "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4",
        "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5"])


def test_coredns_headless_aaaa_and_ipv6_endpoint_names() -> None:
    zone = _ipv6_headless_zone()
    aaaa = zone.answer("hdls1.testns.svc.cluster.local.", AAAA)
    assert {rr.data for rr in aaaa.answer} == {"5678:abcd::1", "5678:abcd::2"}
    one = zone.answer("5678-abcd--2.hdls1.testns.svc.cluster.local", AAAA)
    assert [rr.text() for rr in one.answer] == [
        "5678-abcd--2.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2"]
    assert zone.answer("5678-abcd--3.hdls1.testns.svc.cluster.local", AAAA).rcode == NXDOMAIN
    ptr = zone.answer(reverse_name("5678:abcd::1"), PTR)
    assert [rr.data for rr in ptr.answer] == ["5678-abcd--1.hdls1.testns.svc.cluster.local."]
    # A dashed IPv6 name that would end in "-" gets a trailing 0 (CoreDNS endpointHostname).
    svc = ServiceState(Service(ObjectMeta("h", "n"), cluster_ip="None"), "None")
    eps = EndpointSlice(ObjectMeta("h-1", "n", {"kubernetes.io/service-name": "h"}), "IPv6",
                        (Endpoint(("fd00:1::",)),), (EndpointPort(80, "http", "TCP"),))
    zone = Zone.build([svc], [eps], [], ["n"])
    assert zone.answer("fd00-1--0.h.n.svc.cluster.local.", AAAA).answer[0].data == "fd00:1::"


def test_pod_modes() -> None:
    pods = [type("P", (), {"namespace": "ns1", "name": "p", "ip": "10.244.0.5"})()]
    verified = Zone.build([], [], pods, ["ns1", "ns2"], pod_mode="verified")
    assert verified.answer("10-244-0-5.ns1.pod.cluster.local", A).rcode == NOERROR
    assert verified.answer("10-244-0-6.ns1.pod.cluster.local", A).rcode == NXDOMAIN
    assert verified.answer("10-244-0-5.ns2.pod.cluster.local", A).rcode == NXDOMAIN
    disabled = Zone.build([], [], pods, ["ns1"], pod_mode="disabled")
    assert disabled.answer("10-244-0-5.ns1.pod.cluster.local", A).rcode == NXDOMAIN
    insecure = Zone.build([], [], [], ["ns1"])
    got = insecure.answer("fd00--1.ns1.pod.cluster.local", AAAA)
    assert [rr.text() for rr in got.answer] == ["fd00--1.ns1.pod.cluster.local. 5 IN AAAA fd00::1"]


def test_ns_without_a_dns_service_names_ns_dns() -> None:
    zone = Zone.build([], [], [], [], ns_ips=["127.0.0.1"])
    got = zone.answer("cluster.local.", NS)
    assert [rr.text() for rr in got.answer] == ["cluster.local. 5 IN NS ns.dns.cluster.local."]
    assert [rr.text() for rr in got.additional] == ["ns.dns.cluster.local. 5 IN A 127.0.0.1"]


def test_reverse_names_round_trip() -> None:
    for ip in ("10.96.0.1", "fd00::1", "5678:abcd::2"):
        assert address_from_reverse(reverse_name(ip)) == ip
    assert address_from_reverse("1.2.3.in-addr.arpa.") is None
    assert address_from_reverse("x.1.2.3.in-addr.arpa.") is None


def test_from_state_matches_build(snapshot: tuple[Zone, dict[str, str]]) -> None:
    from labctl.cluster.compile import compile_state
    from tests.unit.builders import deployment, service, topology

    state = compile_state(topology(deployments=(deployment("web", 2, {"app": "web"}),),
                                   services=(service("web", {"app": "web"}),)))
    zone = Zone.from_state(state)
    ip = next(s.cluster_ip for s in state.services if s.name == "web")
    assert [rr.data for rr in zone.answer("web.default.svc.cluster.local", A).answer] == [ip]
    assert len(zone.answer(reverse_name(state.pods[0].ip), PTR).answer) == 1
