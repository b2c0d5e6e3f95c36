"""Where the daemon tells people to connect: the machine's own addresses."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from udpchat.daemon import netinfo


def test_ipv6_table_is_parsed(tmp_path: Path) -> None:
    """Lines of /proc/net/if_inet6 become addresses in their usual written form."""
    table = tmp_path / "if_inet6"
    table.write_text(
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "fd000000000000000000000000000002 02 40 00 80     eth0\n"
    )
    assert netinfo._ipv6_addresses(table) == ["::1", "fd00::2"]


def test_local_addresses_leave_out_loopback_and_link_local(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Loopback, link-local and unspecified addresses are never offered to clients;
    IPv4 comes first; without IPv6, only IPv4."""
    monkeypatch.setattr(netinfo, "_ipv4_addresses", lambda: ["127.0.0.1", "192.0.2.7"])
    monkeypatch.setattr(netinfo, "_ipv6_addresses", lambda: ["::1", "fe80::1", "2001:db8::7"])
    assert netinfo.local_addresses() == ["192.0.2.7", "2001:db8::7"]
    assert netinfo.local_addresses(include_ipv6=False) == ["192.0.2.7"]


def test_hidden_ipv6_table_costs_only_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    """When /proc/net is hidden (systemd ProcSubset=pid) the IPv4 addresses remain."""
    monkeypatch.setattr(netinfo, "_ipv4_addresses", lambda: ["192.0.2.7"])

    def hidden() -> list[str]:
        raise FileNotFoundError("/proc/net/if_inet6")

    monkeypatch.setattr(netinfo, "_ipv6_addresses", hidden)
    assert netinfo.local_addresses() == ["192.0.2.7"]


def test_listening_addresses_follow_the_interface_setting() -> None:
    """A specific interface is the one address to use; "" and "::" mean this
    machine's addresses (real ones here, whatever they are)."""
    assert netinfo.listening_addresses("127.0.0.1") == ["127.0.0.1"]
    for address in netinfo.listening_addresses(""):
        assert ipaddress.ip_address(address).version == 4
        assert not ipaddress.ip_address(address).is_loopback
    assert set(netinfo.listening_addresses("")) <= set(netinfo.listening_addresses("::"))
