"""The pytest plugin's pure helpers: conntrack parsing, packet assertions, lab names."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from labctl.testing import conntrack
from labctl.testing.packets import assert_dnat, assert_packet, assert_snat, find
from labctl.testing.plugin import default_name

TABLE = """\
tcp      6 117 SYN_SENT src=10.244.0.2 dst=10.96.0.5 sport=40000 dport=80 [UNREPLIED] \
src=10.244.1.2 dst=10.244.0.2 sport=8080 dport=40000 mark=0 use=1
tcp      6 431999 ESTABLISHED src=172.18.0.254 dst=172.18.0.2 sport=5555 dport=30080 \
src=10.244.2.3 dst=172.18.0.2 sport=8080 dport=47123 [ASSURED] mark=16384 use=1
udp      17 29 src=10.244.0.2 dst=10.244.1.5 sport=3333 dport=9053 \
src=10.244.1.5 dst=10.244.0.2 sport=9053 dport=3333 mark=0 use=1
icmp     1 29 src=10.244.0.2 dst=10.244.1.2 type=8 code=0 id=77 \
src=10.244.1.2 dst=10.244.0.2 type=0 code=0 id=77 mark=0 use=1
conntrack v1.4.7 (conntrack-tools): 4 flow entries have been shown.
"""


def test_conntrack_lines_parse_into_both_directions() -> None:
    dnat, nodeport, udp, icmp = conntrack.parse(TABLE)
    assert (dnat.proto, dnat.state, dnat.timeout) == ("tcp", "SYN_SENT", 117)
    assert str(dnat.orig) == "10.244.0.2:40000 -> 10.96.0.5:80"
    assert str(dnat.reply) == "10.244.1.2:8080 -> 10.244.0.2:40000"
    assert dnat.flags == {"UNREPLIED"} and dnat.extra == {"mark": "0", "use": "1"}
    assert dnat.dnat and not dnat.snat
    assert nodeport.dnat and nodeport.snat and nodeport.flags == {"ASSURED"}
    assert (nodeport.reply.dst, nodeport.reply.dport) == ("172.18.0.2", 47123)
    assert udp.state == "" and not udp.dnat and not udp.snat
    assert icmp.orig.sport is None and icmp.orig.id == 77 and not icmp.dnat


def test_conntrack_matching_filters_on_the_original_direction() -> None:
    entries = conntrack.parse(TABLE)
    assert conntrack.matching(entries, dst="10.96.0.5", sport=40000) == entries[:1]
    assert conntrack.matching(entries, proto="udp") == entries[2:3]
    assert conntrack.matching(entries, src="10.244.1.2") == []


def _tcp(src: str, dst: str, sport: int, dport: int, flags: str = "S") -> Ether:
    return Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags)


def test_packet_assertions_find_what_was_rewritten() -> None:
    seen = [_tcp("10.244.0.2", "10.244.1.2", 40000, 8080),
            Ether() / IP(src="10.244.0.2", dst="10.244.1.2") / UDP(sport=1, dport=53),
            _tcp("10.244.1.2", "10.244.0.2", 8080, 40000, "SA")]
    assert assert_dnat(seen, to="10.244.1.2:8080", flags="S") is seen[0]
    assert assert_dnat(seen, to="10.244.1.2", src="10.244.0.2:40000",
                       original="10.96.0.5:80") is seen[0]
    assert assert_snat(seen, to="10.244.1.2:8080", dst="10.244.0.2") is seen[2]
    assert find(seen, flags="SA") == [seen[2]]
    assert find(seen, dst="10.244.1.2:53") == [seen[1]]


def test_packet_assertions_say_what_was_captured_when_they_fail() -> None:
    seen = [_tcp("10.244.0.2", "10.96.0.5", 40000, 80)]
    with pytest.raises(AssertionError, match=r"(?s)DNAT-ed to 10.244.1.2:8080.*10.96.0.5"):
        assert_dnat(seen, to="10.244.1.2:8080")
    with pytest.raises(AssertionError, match="still addressed to 10.96.0.5"):
        assert_dnat(seen + [_tcp("10.244.0.2", "10.244.1.2", 40000, 8080)],
                    to="10.244.1.2", original="10.96.0.5")
    with pytest.raises(AssertionError, match="still from 10.244.0.2"):
        assert_snat(seen + [_tcp("172.18.0.2", "10.96.0.5", 40000, 80)], to="172.18.0.2",
                    original="10.244.0.2")
    with pytest.raises(AssertionError, match=r"no packets captured"):
        assert_packet([], dst="10.0.0.1")


def test_default_lab_names_are_valid_and_short() -> None:
    assert default_name("test_my_lab") == "pt-test-my-lab"
    assert len(default_name("test_" + "x" * 80)) == 40


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    found = [e for e in importlib.metadata.entry_points(group="pytest11") if e.name == "labctl"]
    assert [e.value for e in found] == ["labctl.testing.plugin"]


def test_the_plugin_is_loaded_into_this_session(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("labctl")
    assert pytestconfig.getoption("labctl_keep") is False


def test_the_readme_shows_the_example_test_as_it_is() -> None:
    root = Path(__file__).resolve().parents[2]
    example = (root / "examples" / "test_my_lab.py").read_text().rstrip("\n")
    assert f"```python\n{example}\n```" in (root / "README.md").read_text()


def test_loading_the_plugin_imports_neither_scapy_nor_labctls_library() -> None:
    """pytest loads the plugin into every session, this project's own included."""
    code = ("import sys, labctl.testing.plugin; print(sorted(m for m in sys.modules "
            "if m.startswith(('scapy', 'pyroute2', 'yaml', 'labctl.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['labctl.testing', 'labctl.testing.plugin']"
