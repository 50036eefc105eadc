"""The files the kubelet (with its container runtime) gives a pod: resolv.conf, the
managed /etc/hosts, and its hostname and domain (pure).

Reproduces, from kubernetes/kubernetes:

* `pkg/kubelet/network/dns/dns.go` `GetPodDNS`: the base per dnsPolicy (ClusterFirst:
  the cluster DNS IPs, `<ns>.svc.<zone> svc.<zone> <zone>` then the node's search
  domains without duplicates, `ndots:5`; Default: the node's resolv.conf as parsed by
  `parseResolvConf`; None: nothing), then `appendDNSConfig` (dnsConfig nameservers and
  searches appended without duplicates, options merged by name with the pod's values
  winning), then `formDNSConfigFitsLimits` (3 nameservers; 32 search paths, none longer
  than 253 characters, the line at most 2048 characters, cut from the end; a
  `DNSConfigForming` warning when anything is cut).
* The runtime writes the three lists as containerd and CRI-O do (`parseDNSOptions`):
  `search …`, one `nameserver` line each, `options …`.
* `pkg/kubelet/kubelet_pods.go` `managedHostsFileContent` and `hostsEntriesFromHostAliases`
  (the hosts file) and `GeneratePodHostNameAndDomain` / `truncatePodHostnameIfNeeded`.

The merged options keep the order they were first seen in (the kubelet goes through a Go
map, so its order is unspecified).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from labctl.cluster.state import PodState
from labctl.model.objects import HostAlias, Pod, PodDNSConfig, PodSpec

MAX_NAMESERVERS = 3  # validation.MaxDNSNameservers
MAX_SEARCH_PATHS = 32  # validation.MaxDNSSearchPathsExpanded (1.28+; was 6)
MAX_SEARCH_CHARS = 2048  # validation.MaxDNSSearchListCharsExpanded (was 256)
MAX_SEARCH_PATH_LEN = 253  # a longer path makes glibc abort(): the kubelet drops it
MAX_HOSTNAME_LEN = 63
DEFAULT_OPTIONS = ("ndots:5",)

HOSTS_HEADER = "# Kubernetes-managed hosts file.\n"
HOSTS_LOCAL = ("127.0.0.1\tlocalhost\n"
               "::1\tlocalhost ip6-localhost ip6-loopback\n"
               "fe00::0\tip6-localnet\n"
               "fe00::0\tip6-mcastprefix\n"
               "fe00::1\tip6-allnodes\n"
               "fe00::2\tip6-allrouters\n")


def _parts(pod: PodState | Pod) -> tuple[str, str, PodSpec]:
    if isinstance(pod, Pod):
        return pod.meta.name, pod.meta.namespace, pod.spec
    return pod.name, pod.namespace, pod.spec


# ---------------------------------------------------------------- resolv.conf


@dataclass(frozen=True)
class ResolvConf:
    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # what the kubelet would report as events

    @property
    def text(self) -> str:
        """The file as the runtime writes it; "" when all three lists are empty."""
        out = ""
        if self.searches:
            out += "search " + " ".join(self.searches) + "\n"
        out += "".join(f"nameserver {ns}\n" for ns in self.nameservers)
        if self.options:
            out += "options " + " ".join(self.options) + "\n"
        return out

    def __str__(self) -> str:
        return self.text


def parse_resolv_conf(text: str) -> tuple[list[str], list[str], list[str]]:
    """(nameservers, searches, options) as dns.go parseResolvConf reads a resolv.conf:
    nameservers accumulate, the last search and options lines win, trailing dots of
    search domains are dropped, `#` lines are comments."""
    nameservers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    for line in text.split("\n"):
        trimmed = line.strip()
        if trimmed.startswith("#"):
            continue
        fields = trimmed.split()
        if not fields:
            continue
        if fields[0] == "nameserver" and len(fields) >= 2:
            nameservers.append(fields[1])
        elif fields[0] == "search":
            searches = [s.removesuffix(".") for s in fields[1:]]
        elif fields[0] == "options":
            options = fields[1:]
    return nameservers, searches, options


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def merge_options(existing: Iterable[str], config: PodDNSConfig) -> list[str]:
    """dns.go mergeDNSOptions: by name (text before the first ':'), the pod's value wins."""
    merged: dict[str, str] = {}
    for op in existing:
        name, _, value = op.partition(":")
        merged[name] = value
    for option in config.options:
        merged[option.name] = option.value or ""
    return [f"{name}:{value}" if value else name for name, value in merged.items()]


def fit_nameservers(nameservers: Sequence[str]) -> tuple[list[str], str]:
    """(kept, warning or ""): formDNSNameserversFitsLimits."""
    kept = list(nameservers[:MAX_NAMESERVERS])
    if len(kept) == len(nameservers):
        return kept, ""
    return kept, ("Nameserver limits were exceeded, some nameservers have been omitted, "
                  f"the applied nameserver line is: {' '.join(kept)}")


def fit_searches(searches: Sequence[str]) -> tuple[list[str], str]:
    """(kept, warning or ""): formDNSSearchFitsLimits with the expanded limits."""
    kept = list(searches[:MAX_SEARCH_PATHS])
    fitting = [s for s in kept if len(s) <= MAX_SEARCH_PATH_LEN]
    cut = len(fitting) < len(searches)
    while fitting and len(" ".join(fitting)) > MAX_SEARCH_CHARS:
        fitting.pop()  # from the end, as the kubelet cuts
        cut = True
    if not cut:
        return fitting, ""
    return fitting, ("Search Line limits were exceeded, some search paths have been "
                     f"omitted, the applied search line is: {' '.join(fitting)}")


def resolv_conf(pod: PodState | Pod, dns_ip: str | Sequence[str], domain: str,
                node_resolv: str | None) -> ResolvConf:
    """The pod's resolv.conf (kubelet GetPodDNS + the runtime's rendering).

    `dns_ip`: the kubelet's --cluster-dns address(es), "" for none (ClusterFirst then
    falls back to Default, with a warning). `domain`: the cluster domain, "" for none.
    `node_resolv`: the text of the node's resolv.conf, or None for kubelet
    `--resolv-conf=""` (Default then gives `nameserver 127.0.0.1` and `search .`).
    """
    _name, namespace, spec = _parts(pod)
    warnings: list[str] = []
    cluster_dns = [dns_ip] if isinstance(dns_ip, str) else list(dns_ip)
    cluster_dns = [ip for ip in cluster_dns if ip]
    if node_resolv is None:
        nameservers, searches, options = [], [], []
    else:
        nameservers, searches, options = parse_resolv_conf(node_resolv)

    policy = spec.dns_policy
    if policy not in ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"):
        warnings.append(f'invalid dnsPolicy "{policy}"; using ClusterFirst')
        policy = "ClusterFirst"
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet") and not cluster_dns:
        warnings.append(f'no cluster DNS address is configured: a pod with dnsPolicy '
                        f'"{policy}" falls back to "Default"')
        policy = "Default"

    if policy == "None":
        nameservers, searches, options = [], [], []
    elif policy == "Default":
        if node_resolv is None:
            nameservers, searches = ["127.0.0.1"], ["."]  # labs' nodes are IPv4
    else:  # ClusterFirst (labs have no hostNetwork pods) and ClusterFirstWithHostNet
        nameservers = cluster_dns
        if domain:
            searches = _unique([f"{namespace}.svc.{domain}", f"svc.{domain}", domain,
                                *searches])
        options = list(DEFAULT_OPTIONS)

    config = spec.dns_config
    if config is not None:
        nameservers = _unique([*nameservers, *config.nameservers])
        searches = _unique([*searches, *config.searches])
        options = merge_options(options, config)
    if policy == "None" and not nameservers:
        warnings.append('dnsPolicy "None" needs dnsConfig.nameservers: the API server '
                        "rejects the pod without one")
    nameservers, too_many = fit_nameservers(nameservers)
    searches, too_long = fit_searches(searches)
    warnings += filter(None, (too_many, too_long))
    return ResolvConf(tuple(nameservers), tuple(searches), tuple(options), tuple(warnings))


# ---------------------------------------------------------------- hosts and hostname


def hosts_file(pod_ip: str | Sequence[str], hostname: str, domain: str = "",
               host_aliases: Sequence[HostAlias] = ()) -> str:
    """The kubelet-managed /etc/hosts (managedHostsFileContent), one line per pod IP."""
    ips = [pod_ip] if isinstance(pod_ip, str) else list(pod_ip)
    out = HOSTS_HEADER + HOSTS_LOCAL
    for ip in filter(None, ips):
        out += f"{ip}\t{hostname}.{domain}\t{hostname}\n" if domain else f"{ip}\t{hostname}\n"
    if host_aliases:
        out += "\n# Entries added by HostAliases.\n"
        out += "".join(f"{a.ip}\t{chr(9).join(a.hostnames)}\n" for a in host_aliases)
    return out


def truncate_hostname(hostname: str) -> str:
    """At most 63 characters, then no trailing '-' or '.' (truncatePodHostnameIfNeeded)."""
    if len(hostname) <= MAX_HOSTNAME_LEN:
        return hostname
    truncated = hostname[:MAX_HOSTNAME_LEN].rstrip("-.")
    if not truncated:
        raise ValueError(f"hostname {hostname!r} is invalid")
    return truncated


def hostname_and_domain(pod: PodState | Pod, cluster_domain: str) -> tuple[str, str]:
    """(hostname, domain): spec.hostname else the pod name, truncated to 63; the domain is
    `<subdomain>.<namespace>.svc.<zone>` when spec.subdomain is set, else ""."""
    name, namespace, spec = _parts(pod)
    hostname = truncate_hostname(spec.hostname or name)
    domain = f"{spec.subdomain}.{namespace}.svc.{cluster_domain}" if spec.subdomain else ""
    return hostname, domain
