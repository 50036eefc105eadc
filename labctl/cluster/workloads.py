"""Expand Deployments and StatefulSets into Pods, named the way their controllers name them.

Deployment pods are `<deployment>-<pod-template-hash>-<5 chars>`; StatefulSet pods are
`<statefulset>-<ordinal>`. Real controllers pick the 5-character suffix at random; here it
is derived from the pod's owner and replica index so that the same file always gives the
same names (and, through IPAM, the same addresses).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from labctl.model.objects import (
    Deployment,
    ObjectMeta,
    Owner,
    Pod,
    PodTemplate,
    StatefulSet,
    Topology,
)

# The alphabet Kubernetes uses for generated names (no vowels, no look-alikes).
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def safe_encode(data: bytes, length: int) -> str:
    number = int.from_bytes(hashlib.sha256(data).digest()[:8], "big")
    out = []
    for _ in range(length):
        number, digit = divmod(number, len(SAFE_ALPHABET))
        out.append(SAFE_ALPHABET[digit])
    return "".join(out)


def template_hash(owner: str, template: PodTemplate) -> str:
    """A stand-in for pod-template-hash: stable for the same template, 10 characters."""
    return safe_encode(f"{owner}|{template!r}".encode(), 10)


def _pod_from_template(meta: ObjectMeta, name: str, template: PodTemplate,
                       extra_labels: dict[str, str], owner: Owner, **spec_changes: str) -> Pod:
    labels = {**template.labels, **extra_labels}
    spec = replace(template.spec, **spec_changes) if spec_changes else template.spec
    return Pod(
        meta=ObjectMeta(name=name, namespace=meta.namespace, labels=labels,
                        annotations=dict(template.annotations)),
        spec=spec,
        owner=owner,
    )


def deployment_pods(dep: Deployment) -> list[Pod]:
    hash_ = template_hash(f"{dep.meta.namespace}/{dep.meta.name}", dep.template)
    pods = []
    for i in range(dep.replicas):
        suffix = safe_encode(f"{dep.meta.namespace}/{dep.meta.name}/{hash_}/{i}".encode(), 5)
        name = f"{dep.meta.name}-{hash_}-{suffix}"
        pod = _pod_from_template(dep.meta, name, dep.template, {"pod-template-hash": hash_},
                                 Owner("Deployment", dep.meta.name))
        pods.append(replace(pod, source=dep.source))
    return pods


def statefulset_pods(sts: StatefulSet) -> list[Pod]:
    pods = []
    for i in range(sts.replicas):
        name = f"{sts.meta.name}-{i}"
        labels = {
            "statefulset.kubernetes.io/pod-name": name,
            "apps.kubernetes.io/pod-index": str(i),
        }
        pod = _pod_from_template(sts.meta, name, sts.template, labels,
                                 Owner("StatefulSet", sts.meta.name),
                                 hostname=name, subdomain=sts.service_name)
        pods.append(replace(pod, source=sts.source))
    return pods


def all_pods(topology: Topology) -> list[Pod]:
    """Every pod the topology asks for: bare Pods, then each workload's replicas."""
    pods = list(topology.pods)
    for dep in topology.deployments:
        pods.extend(deployment_pods(dep))
    for sts in topology.statefulsets:
        pods.extend(statefulset_pods(sts))
    return pods
