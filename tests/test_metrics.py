"""Specification of the metrics page (udpchat.daemon.metrics): the exposition format
as Prometheus's own parser reads it, and what a fresh daemon reports."""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from udpchat.daemon.config import ServerConfig
from udpchat.daemon.metrics import DROP_REASONS, Family, collect, counter, exposition, gauge
from udpchat.daemon.service import ChatService


def parsed(families: list[Family]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(exposition(families).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_exposition_reads_back_with_prometheus_parser() -> None:
    """Counters, gauges, labels (escaped) and odd values survive the round trip."""
    tricky = 'a "quoted" \\ back\nslash'
    samples = parsed(
        [
            counter("udpchat_things_total", "Things.", 3, (("reason", tricky),)),
            gauge("udpchat_level", "A level.", 2.5),
            gauge("udpchat_big", "Large.", 10**15),
        ]
    )
    assert samples == {
        ("udpchat_things_total", (("reason", tricky),)): 3.0,
        ("udpchat_level", ()): 2.5,
        ("udpchat_big", ()): 1e15,
    }


def test_a_fresh_daemon_reports_zeros_and_every_drop_reason() -> None:
    """Before any traffic: no members, no lines, and every drop reason present at 0
    (so that rate() sees the first drop); no history metrics without a history file."""
    service = ChatService(ServerConfig(path=Path("/test/chat.ini")), Fernet.generate_key(), Clock())
    samples = parsed(collect(service, started_at=1_800_000_000.0))
    assert samples[("udpchat_members", ())] == 0
    assert samples[("udpchat_lines_relayed_total", (("kind", "room"),))] == 0
    reasons = {
        labels[0][1] for name, labels in samples if name == "udpchat_dropped_datagrams_total"
    }
    assert reasons == set(DROP_REASONS) and "replay" in reasons and "bad-mac" in reasons
    assert not any(name.startswith("udpchat_history") for name, _ in samples)
    assert samples[("udpchat_start_time_seconds", ())] == 1_800_000_000.0
