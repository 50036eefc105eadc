"""What every cluster has before the user adds anything (pure): the `kubernetes` Service
and cluster DNS, as kubeadm/kind set them up.

* `default/kubernetes`: ClusterIP at the first service address, port `https` 443 →
  6443, no selector; its EndpointSlice points at the first node's IP:6443, where the
  lab's agent answers in place of an API server (there is none: labs have no control
  plane).
* `kube-system/coredns`: a Deployment of two replicas (one per node when there is only
  one node) labelled `k8s-app: kube-dns`, whose `coredns` container is served by labctl's
  own DNS responder; `kube-system/kube-dns`: its Service at the tenth service address,
  ports `dns` 53/UDP, `dns-tcp` 53/TCP and `metrics` 9153/TCP, as in kubeadm.

The user's own objects of the same names win.
"""

from __future__ import annotations

from dataclasses import replace

from labctl.cluster import ipam
from labctl.cluster.services import (
    DNS_SERVICE_INDEX,
    KUBERNETES_SERVICE_INDEX,
    reserved_service_ip,
)
from labctl.model.objects import (
    Container,
    ContainerPort,
    Deployment,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    LabelSelector,
    Namespace,
    ObjectMeta,
    PodSpec,
    PodTemplate,
    Service,
    ServicePort,
    Topology,
)

BUILTIN_ANNOTATION = "labctl.io/builtin"  # on a pod template: which container labctl serves
DNS_LABELS = {"k8s-app": "kube-dns"}
APISERVER_PORT = 6443


def apiserver_address(topology: Topology) -> str:
    """Where `kubernetes.default` leads: the first node, port 6443 (as in kind)."""
    node_ips, _external = ipam.node_network(topology.lab.node_cidr, len(topology.lab.nodes))
    return node_ips[0]


def kubernetes_service(topology: Topology) -> tuple[Service, EndpointSlice]:
    ip = reserved_service_ip(topology.lab.service_cidr, KUBERNETES_SERVICE_INDEX)
    meta = ObjectMeta("kubernetes", "default",
                      labels={"component": "apiserver", "provider": "kubernetes"})
    svc = Service(meta, selector=None, cluster_ip=ip,
                  ports=(ServicePort(443, name="https", target_port=APISERVER_PORT),))
    es = EndpointSlice(
        ObjectMeta("kubernetes", "default", labels={
            "kubernetes.io/service-name": "kubernetes",
            "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io"}),
        endpoints=(Endpoint((apiserver_address(topology),),
                            EndpointConditions(True, True, False)),),
        ports=(EndpointPort(APISERVER_PORT, "https"),))
    return svc, es


def cluster_dns(topology: Topology) -> tuple[Deployment, Service]:
    replicas = 2 if len(topology.lab.nodes) > 1 else 1
    container = Container(
        name="coredns", image="registry.k8s.io/coredns/coredns:v1.11.3",
        ports=(ContainerPort(53, "dns", "UDP"), ContainerPort(53, "dns-tcp", "TCP"),
               ContainerPort(9153, "metrics", "TCP")))
    template = PodTemplate(labels=dict(DNS_LABELS),
                           annotations={BUILTIN_ANNOTATION: "dns"},
                           spec=PodSpec(containers=(container,), dns_policy="Default"))
    dep = Deployment(ObjectMeta("coredns", "kube-system", labels=dict(DNS_LABELS)), replicas,
                     LabelSelector(dict(DNS_LABELS)), template)
    ip = reserved_service_ip(topology.lab.service_cidr, DNS_SERVICE_INDEX)
    svc = Service(ObjectMeta("kube-dns", "kube-system",
                             labels={**DNS_LABELS, "kubernetes.io/name": "CoreDNS"}),
                  selector=dict(DNS_LABELS), cluster_ip=ip,
                  ports=(ServicePort(53, name="dns", protocol="UDP", target_port=53),
                         ServicePort(53, name="dns-tcp", protocol="TCP", target_port=53),
                         ServicePort(9153, name="metrics", protocol="TCP", target_port=9153)))
    return dep, svc


def with_addons(topology: Topology) -> Topology:
    """The topology plus the objects every cluster has (the user's own versions win)."""
    have = {(kind, o.meta.namespace, o.meta.name)
            for kind, objs in (("Service", topology.services),
                               ("Deployment", topology.deployments),
                               ("EndpointSlice", topology.endpoint_slices))
            for o in objs}
    services = list(topology.services)
    deployments = list(topology.deployments)
    slices = list(topology.endpoint_slices)
    k8s, k8s_slice = kubernetes_service(topology)
    if ("Service", "default", "kubernetes") not in have:
        services.append(k8s)
        if ("EndpointSlice", "default", "kubernetes") not in have:
            slices.append(k8s_slice)
    dns_dep, dns_svc = cluster_dns(topology)
    if ("Deployment", "kube-system", "coredns") not in have:
        deployments.append(dns_dep)
    if ("Service", "kube-system", "kube-dns") not in have:
        services.append(dns_svc)
    namespaces = list(topology.namespaces)
    if not any(n.name == "kube-system" for n in namespaces):
        namespaces.append(Namespace("kube-system"))
    return replace(topology, services=tuple(services), deployments=tuple(deployments),
                   endpoint_slices=tuple(slices), namespaces=tuple(namespaces))
