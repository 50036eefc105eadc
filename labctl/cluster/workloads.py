"""Expand Deployments and StatefulSets into Pods, named the way their controllers name them.

Deployment pods are `<deployment>-<pod-template-hash>-<5 chars>`; StatefulSet pods are
`<statefulset>-<ordinal>`. Real controllers pick the 5-character suffix at random; here it
is derived from the pod's owner and replica slot so that the same file always gives the
same names (and, through IPAM, the same addresses). A slot whose pod was replaced
(`Runtime.generations`) hashes its generation too: a new name, as upstream's new random
one. Each pod comes with its slot (the StatefulSet ordinal; -1 for a bare Pod).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace

from labctl.cluster.runtime import Runtime, generation_key
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


HASH_LABEL = "pod-template-hash"  # a Deployment pod's template: its ReplicaSet


def deployment_hash(dep: Deployment) -> str:
    """The pod-template-hash of the Deployment's current template."""
    return template_hash(f"{dep.meta.namespace}/{dep.meta.name}", dep.template)


def deployment_pod_name(dep: Deployment, slot: int, generation: int = 0,
                        hash_: str = "") -> str:
    """`<deployment>-<hash>-<suffix>`; generation 0 gives the name a fresh lab gives."""
    hash_ = hash_ or deployment_hash(dep)
    seed = f"{dep.meta.namespace}/{dep.meta.name}/{hash_}/{slot}"
    if generation:
        seed += f"/{generation}"
    return f"{dep.meta.name}-{hash_}-{safe_encode(seed.encode(), 5)}"


def deployment_pods(dep: Deployment, replicas: int | None = None,
                    generations: Mapping[int, int] | None = None) -> list[Pod]:
    """The Deployment's pods, slot i at index i (`replicas` overrides spec.replicas;
    `generations`: slot → how many times its pod was replaced)."""
    hash_ = deployment_hash(dep)
    generations = generations or {}
    pods = []
    for i in range(dep.replicas if replicas is None else replicas):
        name = deployment_pod_name(dep, i, generations.get(i, 0), hash_)
        pod = _pod_from_template(dep.meta, name, dep.template, {HASH_LABEL: hash_},
                                 Owner("Deployment", dep.meta.name))
        pods.append(replace(pod, source=dep.source))
    return pods


def statefulset_pods(sts: StatefulSet, replicas: int | None = None) -> list[Pod]:
    """The StatefulSet's pods, ordinal i at index i."""
    pods = []
    for i in range(sts.replicas if replicas is None else replicas):
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


def expand(topology: Topology, runtime: Runtime | None = None) -> list[tuple[Pod, int]]:
    """Every pod the topology asks for with its slot: bare Pods (-1), then each
    workload's replicas. `runtime` gives `labctl scale`'s counts and replaced slots'
    generations (deleted objects are the caller's to filter: `Runtime.visible`)."""
    runtime = runtime or Runtime()
    out: list[tuple[Pod, int]] = [(p, -1) for p in topology.pods]
    for dep in topology.deployments:
        ns, name = dep.meta.namespace, dep.meta.name
        replicas = runtime.replicas_of("Deployment", ns, name, dep.replicas)
        rolling = runtime.rollout_of(ns, name)  # a rollout: the new ReplicaSet's size
        if rolling is not None:
            replicas = min(replicas, rolling)
        gens = {i: runtime.generation(ns, name, i) for i in range(replicas)}
        out.extend((p, i) for i, p in enumerate(deployment_pods(dep, replicas, gens)))
    for sts in topology.statefulsets:
        replicas = runtime.replicas_of("StatefulSet", sts.meta.namespace, sts.meta.name,
                                       sts.replicas)
        out.extend((p, i) for i, p in enumerate(statefulset_pods(sts, replicas)))
    return out


def all_pods(topology: Topology) -> list[Pod]:
    """Every pod the topology asks for: bare Pods, then each workload's replicas."""
    return [pod for pod, _slot in expand(topology)]


def free_deployment_names(topology: Topology, runtime: Runtime) -> Runtime:
    """`runtime` with a fresh name for every Deployment pod whose name a terminating pod,
    or an old pod a rollout keeps, still holds (a template changed back, say): its slot
    takes its next generation, as a ReplicaSet names each new pod afresh. A
    StatefulSet's pod waits for its name instead (compile_state holds it back).
    `topology` as compile_state gets it (add-ons in)."""
    taken = runtime.terminating | runtime.held
    for _ in range(16):  # each round frees every blocked slot; a few suffice
        visible = runtime.visible(topology)
        blocked = {generation_key(p.meta.namespace, p.owner.name, slot)
                   for p, slot in expand(visible, runtime)
                   if p.owner is not None and p.owner.kind == "Deployment"
                   and f"{p.meta.namespace}/{p.meta.name}" in taken}
        if not blocked:
            return runtime
        runtime = replace(runtime, generations={
            **runtime.generations,
            **{key: runtime.generations.get(key, 0) + 1 for key in blocked}})
    return runtime
