"""Value checks: names, ports, addresses, enumerations (pure).

Each check takes a well-typed value and returns a `Problem` (message + hint) or None.
The messages say what was expected and what was found; the hints say how to fix it.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    message: str
    hint: str = ""


Check = Callable[[object], Problem | None]

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_QUALIFIED = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def did_you_mean(value: str, choices: Sequence[str]) -> str:
    """A "did you mean X?" hint, or "" when nothing is close."""
    for choice in choices:
        if choice.lower() == value.lower():
            return f'did you mean "{choice}"?'
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return f'did you mean "{close[0]}"?' if close else ""


def suggest_label(value: str) -> str:
    """The closest DNS-1123 label to `value` (lowercase, '-' for anything else)."""
    text = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")
    return text[:63].rstrip("-")


# ---------------------------------------------------------------- names


@dataclass(frozen=True)
class NameRule:
    """A Kubernetes name format, e.g. DNS-1123 label, with its length limit."""

    title: str  # "DNS-1123 label"
    max_len: int
    why_len: str = ""  # why the limit, for the hint
    start_letter: bool = False  # DNS-1035: must start with a letter
    dots: bool = False  # subdomain: dot-separated labels

    def __call__(self, value: object) -> Problem | None:
        name = str(value)
        if not name:
            return Problem(f"expected a {self.title}, found an empty string")
        if len(name) > self.max_len:
            why = self.why_len or f"a {self.title} holds at most {self.max_len}"
            return Problem(f'"{name}" is {len(name)} characters long; the limit is '
                           f"{self.max_len}", f"shorten the name: {why}")
        parts = name.split(".") if self.dots else [name]
        if all(_LABEL.fullmatch(p) for p in parts) and not (
                self.start_letter and not name[0].isalpha()):
            return None
        return Problem(f'"{name}" is not a valid {self.title}: {self.rules()}',
                       self.suggestion(name))

    def rules(self) -> str:
        allowed = "lowercase letters, digits, '-' and '.'" if self.dots else \
            "lowercase letters, digits and '-'"
        start = "start with a letter and end with a letter or digit" if self.start_letter \
            else "start and end with a letter or digit"
        return f"use only {allowed}, and {start}"

    def suggestion(self, name: str) -> str:
        if self.dots:
            fixed = ".".join(filter(None, (suggest_label(p) for p in name.split("."))))
        else:
            fixed = suggest_label(name)
        if self.start_letter and fixed and not fixed[0].isalpha():
            fixed = "svc-" + fixed
        return f'for example "{fixed}"' if fixed and fixed != name else ""


DNS_LABEL = NameRule("DNS-1123 label", 63)
DNS_SUBDOMAIN = NameRule("DNS-1123 subdomain", 253, dots=True)
SERVICE_NAME = NameRule(
    "DNS-1035 label", 63, start_letter=True,
    why_len="a Service name is a DNS label, at most 63 characters")
POD_NAME = NameRule(
    "DNS-1123 subdomain", 63, dots=True,
    why_len="labctl uses a pod's name as its hostname, which holds at most 63 characters")
NODE_NAME = NameRule("DNS-1123 label", 63)
LAB_NAME = NameRule(
    "DNS-1123 label", 40,
    why_len="a lab name is part of every namespace and link alias labctl creates, so it "
            "holds at most 40 characters")


def port_name(value: object) -> Problem | None:
    """IANA service name: what containerPort names and named targetPorts must be."""
    name = str(value)
    if len(name) > 15:
        return Problem(f'port name "{name}" is {len(name)} characters long; the limit is 15',
                       "shorten it (port names are IANA service names, e.g. \"http\")")
    if not _SVC_NAME.fullmatch(name) or "--" in name or not re.search("[a-z]", name):
        hint = "use lowercase letters, digits and single '-', with at least one letter"
        if name.isdigit():
            hint = f"to give a port number, remove the quotes: {name}"
        return Problem(f'"{name}" is not a valid port name', hint)
    return None


def label_key(value: object) -> Problem | None:
    key = str(value)
    prefix, _, name = key.rpartition("/")
    if prefix and DNS_SUBDOMAIN(prefix) is not None:
        return Problem(f'label key "{key}" has an invalid prefix "{prefix}"',
                       "a prefix is a DNS subdomain such as app.kubernetes.io")
    if not name or len(name) > 63 or not _QUALIFIED.fullmatch(name):
        return Problem(f'"{key}" is not a valid label key',
                       "a key is an optional DNS prefix and '/', then at most 63 letters, "
                       "digits, '-', '_' or '.', starting and ending with a letter or digit")
    return None


def label_value(value: object) -> Problem | None:
    text = str(value)
    if len(text) > 63:
        return Problem(f"label value is {len(text)} characters long; the limit is 63",
                       "shorten the value (labels are for selecting, annotations for text)")
    if text and not _QUALIFIED.fullmatch(text):
        return Problem(f'"{text}" is not a valid label value',
                       "use letters, digits, '-', '_' and '.', starting and ending with a "
                       "letter or digit")
    return None


# ---------------------------------------------------------------- numbers


def int_range(low: int, high: int, what: str = "a value", hint: str = "") -> Check:
    def check(value: object) -> Problem | None:
        assert isinstance(value, int)
        if low <= value <= high:
            return None
        return Problem(f"expected {what} in {low}-{high}, found {value}", hint)

    return check


PORT = int_range(1, 65535, "a port number", "port numbers are 1-65535")
NODE_PORT_RANGE = (30000, 32767)


def node_port(value: object) -> Problem | None:
    assert isinstance(value, int)
    low, high = NODE_PORT_RANGE
    if value == 0 or low <= value <= high:  # 0 means "allocate one", as in Kubernetes
        return None
    return Problem(f"expected a nodePort in {low}-{high}, found {value}",
                   f"nodePorts come from the range {low}-{high}; omit nodePort to have one "
                   "allocated")


def non_negative(value: object) -> Problem | None:
    assert isinstance(value, int)
    if value >= 0:
        return None
    return Problem(f"expected 0 or more, found {value}", "use 0 or a positive number")


def int_or_percent(value: object) -> Problem | None:
    """maxSurge and maxUnavailable: a count of pods, or a percent of replicas."""
    if isinstance(value, int):
        return non_negative(value)
    text = str(value)
    if text.endswith("%") and text[:-1].isdigit():
        return None
    return Problem(f'expected a number of pods or a percent, found "{text}"',
                   'write a whole number (1) or a percent of replicas ("25%")')


def int_or_port_name(value: object) -> Problem | None:
    """targetPort and probe ports: a port number or the name of a container port."""
    return PORT(value) if isinstance(value, int) else port_name(value)


# ---------------------------------------------------------------- addresses


def ipv4(value: object) -> Problem | None:
    text = str(value)
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        hint = "labctl builds IPv4 networks only" if ":" in text else \
            "write four numbers 0-255 separated by dots, e.g. 10.96.0.20"
        return Problem(f'expected an IPv4 address, found "{text}"', hint)
    return None


def cluster_ip(value: object) -> Problem | None:
    """A Service's clusterIP: an address, "None" (headless), or empty (allocate)."""
    text = str(value)
    if text in ("", "None"):
        return None
    problem = ipv4(text)
    if problem and text.lower() == "none":
        return Problem(f'expected an IPv4 address or "None", found "{text}"',
                       'write clusterIP: None (capital N) for a headless Service')
    return problem and Problem(f'expected an IPv4 address or "None", found "{text}"',
                               problem.hint)


def cidr(value: object) -> Problem | None:
    text = str(value)
    if ":" in text:
        return Problem(f'expected an IPv4 CIDR, found "{text}"', "labctl builds IPv4 "
                       "networks only")
    if "/" not in text:
        return Problem(f'expected a CIDR (address/prefix), found "{text}"',
                       f"add the prefix length, e.g. {text}/16")
    try:
        ipaddress.IPv4Network(text)
    except ValueError:
        try:
            network = ipaddress.IPv4Network(text, strict=False)
        except ValueError:
            return Problem(f'expected an IPv4 CIDR, found "{text}"',
                           "write four numbers 0-255 and a prefix length, e.g. 172.18.0.0/24")
        return Problem(f'"{text}" has host bits set', f'did you mean "{network}"?')
    return None


# ---------------------------------------------------------------- enumerations


def one_of(*choices: str, hint: str = "") -> Check:
    def check(value: object) -> Problem | None:
        if value in choices:
            return None
        listed = ", ".join(choices)
        suggestion = did_you_mean(str(value), choices)
        if suggestion and str(value).lower() in (c.lower() for c in choices):
            advice = f"values are case-sensitive: {suggestion}"
        else:
            advice = " ".join(filter(None, (suggestion, hint)))
        return Problem(f'expected one of {listed}, found "{value}"', advice)

    return check


PROTOCOL = one_of("TCP", "UDP", "SCTP", hint="an application protocol such as HTTP goes in "
                  "appProtocol; protocol is the transport")
