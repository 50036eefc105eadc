"""The Kubernetes API fields of every supported kind: the ones labctl models, and the
real ones it accepts and ignores (anything else is an unknown field, i.e. a typo).

Field lists follow the Kubernetes API reference (v1.31): ObjectMeta, PodSpec, Container,
Probe, DeploymentSpec, StatefulSetSpec, ServiceSpec, EndpointSlice, Namespace.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from labctl.model import checks
from labctl.model.objects import (
    DEPLOYMENT_STRATEGIES,
    IPVS_SCHEDULERS,
    PROXY_MODES,
    STATEFULSET_STRATEGIES,
)
from labctl.model.schema import (
    BOOLEAN,
    IGNORED,
    OPAQUE,
    STRING,
    ListOf,
    MapOf,
    Noted,
    Scalar,
    Struct,
    struct,
)

LABELS = MapOf(checks.label_key, checks.label_value)
ANNOTATIONS = MapOf(checks.label_key)
STRINGS = ListOf(STRING)
PORT = Scalar("integer", (checks.PORT,))
PROTOCOL = Scalar("string", (checks.PROTOCOL,))
COUNT = Scalar("integer", (checks.non_negative,))
PORT_REF = Scalar("int-or-string", (checks.int_or_port_name,))

_META_IGNORED = (
    "generateName selfLink uid resourceVersion generation creationTimestamp "
    "deletionTimestamp deletionGracePeriodSeconds ownerReferences finalizers managedFields"
)
_NAME_HINT = "add name: <name> under metadata: every object needs a name"
_METADATA_HINT = "add metadata: with name: <name>"


def object_meta(name_rule: checks.NameRule, namespaced: bool = True) -> Struct:
    namespace = Scalar("string", (checks.DNS_LABEL,)) if namespaced else IGNORED
    return struct(
        {"name": Scalar("string", (name_rule,)), "namespace": namespace, "labels": LABELS,
         "annotations": ANNOTATIONS},
        _META_IGNORED, {"name": _NAME_HINT})


TEMPLATE_META = struct({"labels": LABELS, "annotations": ANNOTATIONS},
                       "name namespace " + _META_IGNORED)

# ---------------------------------------------------------------- pods

CONTAINER_PORT = struct(
    {"containerPort": PORT, "name": Scalar("string", (checks.port_name,)),
     "protocol": PROTOCOL},
    "hostPort hostIP",
    {"containerPort": "add containerPort: <number>, the port the container listens on"})

ENV_VAR = struct({"name": STRING, "value": STRING, "valueFrom": OPAQUE}, "",
                 {"name": "add name: <VARIABLE_NAME>"})

_PROBE_PORT_HINT = "add port: <number or container port name>"
PROBE = struct(
    {
        "exec": struct({"command": STRINGS}),
        "httpGet": struct({"path": STRING, "port": PORT_REF, "host": STRING, "scheme": STRING,
                           "httpHeaders": ListOf(struct({"name": STRING, "value": STRING}, "",
                                                        {"name": "add name: <header name>"}))},
                          "", {"port": _PROBE_PORT_HINT}),
        "tcpSocket": struct({"port": PORT_REF, "host": STRING}, "", {"port": _PROBE_PORT_HINT}),
        "grpc": struct({"port": PORT}, "service", {"port": "add port: <number>"}),
        "initialDelaySeconds": COUNT, "timeoutSeconds": COUNT, "periodSeconds": COUNT,
        "successThreshold": COUNT, "failureThreshold": COUNT,
    },
    "terminationGracePeriodSeconds")

CONTAINER = struct(
    {
        "name": Scalar("string", (checks.DNS_LABEL,)),
        "image": Noted(STRING),
        "command": STRINGS, "args": STRINGS,
        "ports": ListOf(CONTAINER_PORT), "env": ListOf(ENV_VAR),
        "readinessProbe": PROBE, "livenessProbe": PROBE, "startupProbe": PROBE,
    },
    "workingDir envFrom resources resizePolicy restartPolicy lifecycle "
    "terminationMessagePath terminationMessagePolicy imagePullPolicy securityContext stdin "
    "stdinOnce tty volumeMounts volumeDevices",
    {"name": "add name: <container name>"})


def _ip_address(value: object) -> checks.Problem | None:
    """hostAliases[].ip and dnsConfig.nameservers[]: an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return checks.Problem(f'expected an IP address, found "{value}"',
                              "write an address such as 10.96.0.10")
    return None


def _search_domain(value: object) -> checks.Problem | None:
    """dnsConfig.searches[]: a DNS subdomain, a trailing dot allowed (as the API allows)."""
    return checks.DNS_SUBDOMAIN(str(value).removesuffix("."))


POD_DNS_CONFIG = struct(
    {"nameservers": ListOf(Scalar("string", (_ip_address,))),
     "searches": ListOf(Scalar("string", (_search_domain,))),
     "options": ListOf(struct({"name": STRING, "value": STRING}, "",
                              {"name": "add name: <option>, e.g. ndots"}))})

HOST_ALIAS = struct(
    {"ip": Scalar("string", (_ip_address,)),
     "hostnames": ListOf(Scalar("string", (checks.DNS_SUBDOMAIN,)))},
    "", {"ip": "add ip: <address> for these hostnames"})

POD_SPEC = struct(
    {
        "containers": ListOf(CONTAINER, 1, "add at least one container (name and image)"),
        "nodeName": Scalar("string", (checks.NODE_NAME,)),
        "nodeSelector": LABELS,
        "hostname": Scalar("string", (checks.DNS_LABEL,)),
        "subdomain": Scalar("string", (checks.DNS_LABEL,)),
        "enableServiceLinks": BOOLEAN,
        "restartPolicy": Scalar("string", (checks.one_of("Always", "OnFailure", "Never"),)),
        "terminationGracePeriodSeconds": COUNT,
        "dnsPolicy": Scalar("string", (checks.one_of(
            "ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"),)),
        "dnsConfig": POD_DNS_CONFIG,
        "hostAliases": ListOf(HOST_ALIAS),
    },
    "volumes initContainers ephemeralContainers activeDeadlineSeconds serviceAccountName "
    "serviceAccount automountServiceAccountToken hostNetwork hostPID hostIPC "
    "shareProcessNamespace securityContext imagePullSecrets affinity schedulerName "
    "tolerations priorityClassName priority readinessGates "
    "runtimeClassName preemptionPolicy overhead topologySpreadConstraints setHostnameAsFQDN "
    "os hostUsers schedulingGates resourceClaims resources",
    {"containers": "add containers: with at least one container (name and image)"})

POD_STATUS = struct(
    {"podIP": Scalar("string", (checks.ipv4,))},
    "phase conditions message reason nominatedNodeName hostIP hostIPs podIPs startTime "
    "initContainerStatuses containerStatuses qosClass ephemeralContainerStatuses resize "
    "resourceClaimStatuses")

# apiVersion and kind are checked by the loader before the walk, so the walk keeps them as is.
_TOP = {"apiVersion": OPAQUE, "kind": OPAQUE}
_SPEC_HINT = "add spec: with the object's specification"

POD = struct({**_TOP, "metadata": object_meta(checks.POD_NAME), "spec": POD_SPEC,
              "status": POD_STATUS}, "",
             {"metadata": _METADATA_HINT, "spec": "add spec: with containers:"})

# ---------------------------------------------------------------- workloads

SELECTOR_REQUIREMENT = struct(
    {"key": Scalar("string", (checks.label_key,)),
     "operator": Scalar("string", (checks.one_of("In", "NotIn", "Exists", "DoesNotExist"),)),
     "values": ListOf(Scalar("string", (checks.label_value,)))},
    "", {"key": "add key: <label key>", "operator": "add operator: In|NotIn|Exists|DoesNotExist"})

LABEL_SELECTOR = struct({"matchLabels": LABELS,
                         "matchExpressions": ListOf(SELECTOR_REQUIREMENT)})

POD_TEMPLATE = struct({"metadata": TEMPLATE_META, "spec": POD_SPEC}, "",
                      {"spec": "add spec: with containers:"})

_SELECTOR_HINT = "add selector: {matchLabels: ...} with the labels of spec.template"
_TEMPLATE_HINT = "add template: with metadata.labels and spec.containers"
_WORKLOAD = {"replicas": COUNT, "selector": LABEL_SELECTOR, "template": POD_TEMPLATE}
_WORKLOAD_REQUIRED = {"selector": _SELECTOR_HINT, "template": _TEMPLATE_HINT}

INT_OR_PERCENT = Scalar("int-or-string", (checks.int_or_percent,))
DEPLOYMENT_STRATEGY = struct({
    "type": Scalar("string", (checks.one_of(
        *DEPLOYMENT_STRATEGIES, hint="RollingUpdate replaces pods a few at a time, "
        "Recreate stops them all first"),)),
    "rollingUpdate": struct({"maxSurge": INT_OR_PERCENT,
                             "maxUnavailable": INT_OR_PERCENT})})

DEPLOYMENT = struct(
    {**_TOP, "metadata": object_meta(checks.DNS_SUBDOMAIN),
     "spec": struct({**_WORKLOAD, "strategy": DEPLOYMENT_STRATEGY, "minReadySeconds": COUNT},
                    "revisionHistoryLimit paused progressDeadlineSeconds",
                    _WORKLOAD_REQUIRED)},
    "status", {"metadata": _METADATA_HINT, "spec": _SPEC_HINT})

STATEFULSET_STRATEGY = struct({
    "type": Scalar("string", (checks.one_of(
        *STATEFULSET_STRATEGIES, hint="RollingUpdate replaces the pods one at a time, "
        "OnDelete only when you delete one"),)),
    "rollingUpdate": struct({"partition": COUNT}, "maxUnavailable")})

STATEFULSET = struct(
    {**_TOP, "metadata": object_meta(checks.DNS_LABEL),
     "spec": struct({**_WORKLOAD, "serviceName": STRING,
                     "updateStrategy": STATEFULSET_STRATEGY},
                    "volumeClaimTemplates podManagementPolicy "
                    "revisionHistoryLimit minReadySeconds persistentVolumeClaimRetentionPolicy "
                    "ordinals", _WORKLOAD_REQUIRED)},
    "status", {"metadata": _METADATA_HINT, "spec": _SPEC_HINT})

# ---------------------------------------------------------------- services

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
TRAFFIC_POLICY = Scalar("string", (checks.one_of(
    "Cluster", "Local", hint="Cluster uses endpoints on every node, Local only those on the "
    "node the traffic arrived at"),))

SERVICE_PORT = struct(
    {"name": Scalar("string", (checks.DNS_LABEL,)), "protocol": PROTOCOL,
     "appProtocol": STRING, "port": PORT, "targetPort": PORT_REF,
     "nodePort": Scalar("integer", (checks.node_port,))},
    "", {"port": "add port: <number>, the port the Service listens on"})

SERVICE_SPEC = struct(
    {
        "ports": ListOf(SERVICE_PORT),
        "selector": LABELS,
        "clusterIP": Scalar("string", (checks.cluster_ip,)),
        "clusterIPs": ListOf(Scalar("string", (checks.cluster_ip,))),
        "type": Scalar("string", (checks.one_of(*SERVICE_TYPES),)),
        "externalIPs": ListOf(Scalar("string", (checks.ipv4,))),
        "sessionAffinity": Scalar("string", (checks.one_of("None", "ClientIP"),)),
        "loadBalancerIP": Scalar("string", (checks.ipv4,)),
        "loadBalancerSourceRanges": ListOf(Scalar("string", (checks.cidr,))),
        "externalName": STRING,
        "externalTrafficPolicy": TRAFFIC_POLICY,
        "internalTrafficPolicy": TRAFFIC_POLICY,
        "healthCheckNodePort": Scalar("integer", (checks.node_port,)),
        "publishNotReadyAddresses": BOOLEAN,
        "sessionAffinityConfig": struct({"clientIP": struct({"timeoutSeconds": Scalar(
            "integer", (checks.int_range(1, 86400, "a number of seconds", "at most 86400 "
                                         "(one day); the default is 10800"),))})}),
    },
    "ipFamilies ipFamilyPolicy allocateLoadBalancerNodePorts loadBalancerClass "
    "trafficDistribution")

SERVICE_STATUS = struct(
    {"loadBalancer": struct({"ingress": ListOf(struct(
        {"ip": Scalar("string", (checks.ipv4,))}, "hostname ipMode ports"))})},
    "conditions")

SERVICE = struct({**_TOP, "metadata": object_meta(checks.SERVICE_NAME), "spec": SERVICE_SPEC,
                  "status": SERVICE_STATUS}, "", {"metadata": _METADATA_HINT})

# ---------------------------------------------------------------- endpoint slices

ENDPOINT = struct(
    {
        "addresses": ListOf(STRING, 1, "add at least one address"),
        "conditions": struct({"ready": BOOLEAN, "serving": BOOLEAN, "terminating": BOOLEAN}),
        "hostname": Scalar("string", (checks.DNS_LABEL,)),
        "nodeName": STRING,
        "zone": STRING,
        "targetRef": struct({"kind": STRING, "namespace": STRING, "name": STRING},
                            "uid apiVersion resourceVersion fieldPath"),
    },
    "hints deprecatedTopology", {"addresses": "add addresses: [<pod IP>]"})

ENDPOINT_PORT = struct({"name": STRING, "protocol": PROTOCOL, "port": PORT,
                        "appProtocol": STRING})

ENDPOINT_SLICE = struct(
    {**_TOP, "metadata": object_meta(checks.DNS_SUBDOMAIN),
     "addressType": Scalar("string", (checks.one_of("IPv4", "IPv6", "FQDN"),)),
     "endpoints": ListOf(ENDPOINT), "ports": ListOf(ENDPOINT_PORT)},
    "", {"metadata": _METADATA_HINT, "addressType": "add addressType: IPv4"})

NAMESPACE = struct({**_TOP, "metadata": object_meta(checks.DNS_LABEL, namespaced=False)},
                   "spec status", {"metadata": _METADATA_HINT})

# ---------------------------------------------------------------- the lab

LAB_NODE = struct({"name": Scalar("string", (checks.NODE_NAME,)), "labels": LABELS}, "",
                  {"name": "add name: <node name>"})

_CIDR = Scalar("string", (checks.cidr,))
LAB = struct(
    {**_TOP,
     "metadata": struct({"name": STRING}, "labels annotations"),
     "spec": struct({
         "nodes": ListOf(LAB_NODE, 1, "a lab needs at least one node, e.g. - name: node1"),
         "podCIDR": _CIDR, "serviceCIDR": _CIDR,
         "podCIDRPerNode": Scalar("integer", (checks.int_range(
             16, 28, "a prefix length", "podCIDRPerNode is the prefix of each node's pod "
             "subnet, 16-28 (24: 253 pods per node)"),)),
         "nodeCIDR": _CIDR, "loadBalancerCIDR": _CIDR,
         "proxyMode": Scalar("string", (checks.one_of(
             *PROXY_MODES, hint="proxyMode is one of " + ", ".join(PROXY_MODES)),)),
         "iptablesBackend": Scalar("string", (checks.one_of(
             "nft", "legacy", hint="iptablesBackend is nft (iptables-nft) or legacy "
             "(iptables-legacy); leave it out for the system's default"),)),
         "ipvsScheduler": Scalar("string", (checks.one_of(
             *IPVS_SCHEDULERS, hint="ipvsScheduler (proxyMode ipvs) is one of "
             + ", ".join(IPVS_SCHEDULERS) + "; rr when left out, as kube-proxy"),)),
         "clusterDomain": Scalar("string", (checks.DNS_SUBDOMAIN,)),
     })})

LIST = struct({**_TOP, "metadata": OPAQUE, "items": ListOf(OPAQUE)})


@dataclass(frozen=True)
class Kind:
    name: str
    api_version: str
    schema: Struct
    namespaced: bool = True


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("Lab", "labctl/v1", LAB, namespaced=False),
    Kind("Namespace", "v1", NAMESPACE, namespaced=False),
    Kind("Pod", "v1", POD),
    Kind("Deployment", "apps/v1", DEPLOYMENT),
    Kind("StatefulSet", "apps/v1", STATEFULSET),
    Kind("Service", "v1", SERVICE),
    Kind("EndpointSlice", "discovery.k8s.io/v1", ENDPOINT_SLICE),
    Kind("List", "v1", LIST, namespaced=False),
)}

# Kinds people write that labctl cannot model, with what to use instead.
KIND_ADVICE = {
    "Endpoints": "use an EndpointSlice (discovery.k8s.io/v1) instead",
    "ReplicaSet": "use a Deployment instead",
    "DaemonSet": "use a Deployment with one replica per node, or Pods with nodeName",
}
