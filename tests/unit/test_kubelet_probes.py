"""The prober's kubelet semantics, with the time passed in (no sleeping), and the
asyncio prober with a fake executor on a shrunk clock."""

from __future__ import annotations

import asyncio

import pytest

from labctl.kubelet import probes
from labctl.kubelet.probes import (
    LIVENESS,
    NOT_READY,
    READINESS,
    READY,
    RESTART,
    STARTED,
    STARTUP,
    Change,
    ContainerProber,
    ContainerProbes,
    Outcome,
    ProbeError,
    ProbeTracker,
    Result,
    Target,
    errored,
    failure,
    success,
)
from labctl.model import build
from labctl.model.objects import Probe

OK, FAIL, ERR = success(), failure("HTTP probe failed with statuscode: 503"), errored("boom")


def http(period: int = 10, delay: int = 0, success_threshold: int = 1,
         failure_threshold: int = 3) -> Probe:
    return Probe(kind="httpGet", port=8080, path="/healthz", period_seconds=period,
                 initial_delay_seconds=delay, success_threshold=success_threshold,
                 failure_threshold=failure_threshold)


def whats(changes: list[Change]) -> list[str]:
    return [c.what for c in changes]


# ---------------------------------------------------------------- ProbeTracker


def test_initial_results_are_the_kubelets() -> None:
    assert ProbeTracker(READINESS, http()).result is Result.FAILURE
    assert ProbeTracker(LIVENESS, http()).result is Result.SUCCESS
    assert ProbeTracker(STARTUP, http()).result is Result.UNKNOWN


def test_thresholds_count_results_in_a_row() -> None:
    t = ProbeTracker(READINESS, http(success_threshold=2, failure_threshold=3))
    assert t.record(Result.SUCCESS) is None
    assert t.record(Result.SUCCESS) is Result.SUCCESS
    assert t.record(Result.SUCCESS) is None  # no change
    assert t.record(Result.FAILURE) is None
    assert t.record(Result.FAILURE) is None
    assert t.record(Result.SUCCESS) is None  # breaks the run of failures
    assert [t.record(Result.FAILURE) for _ in range(3)] == [None, None, Result.FAILURE]
    assert t.result is Result.FAILURE


def test_an_errored_probe_is_discarded() -> None:
    t = ProbeTracker(READINESS, http(failure_threshold=2))
    t.record(Result.FAILURE)
    assert t.record(Result.UNKNOWN) is None
    assert t.record(Result.FAILURE) is None  # still no change: it already fails
    assert t.run == 2


def test_liveness_failure_holds_until_a_new_container() -> None:
    t = ProbeTracker(LIVENESS, http(failure_threshold=1))
    t.reset(0)
    assert t.take(0)
    assert t.record(Result.FAILURE) is Result.FAILURE
    assert t.on_hold and not t.take(100)
    t.reset(200)
    assert (t.result, t.on_hold, t.run) == (Result.SUCCESS, False, 0)
    assert t.take(200)


def test_initial_delay_then_every_period() -> None:
    t = ProbeTracker(READINESS, http(period=10, delay=5))
    assert not t.take(0)  # container not running
    t.reset(100)
    assert [now for now in range(100, 131) if t.take(now)] == [105, 115, 125]


def test_a_late_probe_does_not_make_up_for_missed_periods() -> None:
    t = ProbeTracker(READINESS, http(period=10))
    t.reset(0)
    assert t.take(0)
    assert t.take(35)  # three ticks missed: one probe, then a period from now
    assert not t.take(44)
    assert t.take(45)


def test_unknown_probe_type() -> None:
    with pytest.raises(ValueError):
        ProbeTracker("sometimes", http())


# ---------------------------------------------------------------- ContainerProbes


def test_without_probes_ready_as_soon_as_started() -> None:
    c = ContainerProbes("web")
    assert not c.ready
    assert c.start(0) == []  # the first start reports nothing: read .ready
    assert c.ready and c.started
    assert c.due(0) == [] and c.next_wakeup() is None


def test_readiness_not_ready_until_a_probe_succeeds() -> None:
    c = ContainerProbes("web", readiness=http(period=10, delay=3))
    c.start(0)
    assert not c.ready
    assert c.due(2) == [] and c.next_wakeup() == 3
    assert c.due(3) == [READINESS]
    assert c.record(READINESS, OK, 3) == [Change(READY, "Readiness probe succeeded")]
    assert c.ready
    assert c.due(12) == [] and c.due(13) == [READINESS]


def test_readiness_fails_after_failure_threshold_with_the_probes_message() -> None:
    c = ContainerProbes("web", readiness=http(failure_threshold=3))
    c.start(0)
    c.record(READINESS, OK, 0)
    assert c.record(READINESS, FAIL, 10) == []
    assert c.record(READINESS, FAIL, 20) == []
    assert c.record(READINESS, FAIL, 30) == [
        Change(NOT_READY, "Readiness probe failed: HTTP probe failed with statuscode: 503")]
    assert c.record(READINESS, FAIL, 40) == []
    assert whats(c.record(READINESS, OK, 50)) == [READY]


def test_liveness_failure_restarts_and_the_new_container_starts_over() -> None:
    c = ContainerProbes("web", readiness=http(), liveness=http(failure_threshold=2))
    c.start(0)
    c.record(READINESS, OK, 0)
    assert c.ready
    assert c.record(LIVENESS, FAIL, 10) == []
    changes = c.record(LIVENESS, FAIL, 20)
    reason = "Container web failed liveness probe, will be restarted"
    assert changes == [Change(NOT_READY, reason), Change(RESTART, reason)]
    assert c.due(100) == [] and c.next_wakeup() is None  # nothing until the restart
    assert c.record(READINESS, OK, 21) == []  # a probe still in flight: ignored
    assert c.start(120) == []  # readiness starts from failure again: still not ready
    assert c.due(120) == [LIVENESS, READINESS]
    assert whats(c.record(READINESS, OK, 120)) == [READY]


def test_outcomes_of_a_replaced_container_are_dropped() -> None:
    c = ContainerProbes("web", readiness=http(failure_threshold=1))
    c.start(0)
    old = c.generation
    c.exited()
    c.start(5)
    assert c.record(READINESS, OK, 6, generation=old) == []
    assert whats(c.record(READINESS, OK, 6, generation=c.generation)) == [READY]


def test_exit_makes_the_container_not_ready_and_stops_probes() -> None:
    c = ContainerProbes("web")
    c.start(0)
    assert c.exited("exit code 3") == [Change(NOT_READY, "exit code 3")]
    assert c.due(10) == []
    assert whats(c.start(11)) == [READY]


def test_startup_gates_liveness_and_readiness() -> None:
    c = ContainerProbes("web", startup=http(period=2, failure_threshold=30),
                        liveness=http(period=10, delay=0), readiness=http(period=5, delay=1))
    c.start(0)
    assert not c.started and not c.ready
    assert c.due(0) == [STARTUP]
    assert c.record(STARTUP, FAIL, 0) == []
    assert c.due(2) == [STARTUP]  # liveness and readiness are not probed meanwhile
    assert c.next_wakeup() == 4
    changes = c.record(STARTUP, OK, 4)
    assert whats(changes) == [STARTED]  # started, but readiness must succeed first
    assert c.started and not c.ready
    assert c.due(4) == [LIVENESS, READINESS]  # at once after startup, as the kubelet does
    assert c.due(6) == []  # and the startup probe is done
    assert whats(c.record(READINESS, OK, 4)) == [READY]


def test_a_container_taken_over_ready_stays_ready_until_a_probe_fails() -> None:
    c = ContainerProbes("web", startup=http(), readiness=http(failure_threshold=1))
    c.start(0, was_ready=True)
    assert c.started and c.ready
    assert c.due(0) == [READINESS]  # no startup probe for a container that had started
    assert whats(c.record(READINESS, FAIL, 0)) == [NOT_READY]


def test_startup_success_without_readiness_probe_makes_ready() -> None:
    c = ContainerProbes("web", startup=http())
    c.start(0)
    assert not c.ready
    assert whats(c.record(STARTUP, OK, 0)) == [STARTED, READY]


def test_startup_failure_restarts() -> None:
    c = ContainerProbes("db", startup=http(failure_threshold=2))
    c.start(0)
    c.record(STARTUP, FAIL, 0)
    assert c.record(STARTUP, FAIL, 10) == [
        Change(RESTART, "Container db failed startup probe, will be restarted")]
    c.start(20)
    assert not c.started and c.due(20) == [STARTUP]


def test_grpc_probes_count_as_not_set() -> None:
    grpc = Probe(kind="grpc", port=9000)
    c = ContainerProbes("web", readiness=grpc, liveness=grpc, startup=grpc)
    c.start(0)
    assert c.ready and c.trackers == {}
    assert not probes.usable(grpc) and probes.usable(http())
    outcome = asyncio.run(probes.run_probe(grpc, Target("n", "p", "10.0.0.1")))
    assert outcome == errored("labctl does not run gRPC probes")


# ---------------------------------------------------------------- forced faults


def test_forced_readiness_fails_the_real_probe_until_cleared() -> None:
    c = ContainerProbes("web", readiness=http(failure_threshold=2))
    c.start(0)
    c.record(READINESS, OK, 0)
    c.force(READINESS, "broken by labctl break", 1)
    assert c.canned(READINESS) == failure("broken by labctl break")
    assert c.record(READINESS, FAIL, 10) == []
    # The container answers fine, but the fault wins (also for a probe in flight).
    assert c.record(READINESS, OK, 20) == [
        Change(NOT_READY, "Readiness probe failed: broken by labctl break")]
    c.clear(READINESS, 25)
    assert c.canned(READINESS) is None
    assert whats(c.record(READINESS, OK, 30)) == [READY]


def test_forced_readiness_without_a_probe_acts_as_the_default_probe() -> None:
    c = ContainerProbes("web", implicit_period=1.5)
    c.start(0)
    assert c.force(READINESS, "cut", 10) == []
    assert c.ready  # a passing default probe needs three failures
    assert c.next_wakeup() == 11.5
    changes = []
    for now in (11.5, 13, 14.5):
        assert c.due(now) == [READINESS]
        changes += c.record(READINESS, c.canned(READINESS), now)
    assert changes == [Change(NOT_READY, "Readiness probe failed: cut")]
    c.clear(None, 15)
    assert not c.ready  # back on the next probe, which asks nothing and succeeds
    assert c.due(16) == [READINESS]
    assert c.canned(READINESS) == success()
    assert whats(c.record(READINESS, c.canned(READINESS), 16)) == [READY]
    assert READINESS not in c.trackers and c.next_wakeup() is None


def test_forced_liveness_without_a_probe_restarts_until_cleared() -> None:
    c = ContainerProbes("web", implicit_period=1)
    c.start(0)
    c.force(LIVENESS, "deadlock", 0)
    seen = []
    for now in (1, 2, 3):
        assert c.due(now) == [LIVENESS]
        seen += whats(c.record(LIVENESS, c.canned(LIVENESS), now))
    assert seen == [NOT_READY, RESTART]
    c.start(4)  # the agent restarted it: the fault is still there
    assert c.ready
    assert c.due(4) == [LIVENESS]
    c.clear(LIVENESS, 4.5)
    assert LIVENESS not in c.trackers and c.due(10) == []
    assert c.ready and c.forced == {}


def test_only_readiness_and_liveness_can_be_forced() -> None:
    with pytest.raises(ValueError, match="readiness, liveness"):
        ContainerProbes("web").force(STARTUP, "x", 0)


# ---------------------------------------------------------------- helpers


def test_resolve_port() -> None:
    ports = {"http": 8080}
    assert probes.resolve_port(80, ports) == 80
    assert probes.resolve_port("http", ports) == 8080
    assert probes.resolve_port("8081", ports) == 8081  # the kubelet's last try
    with pytest.raises(ProbeError, match='no container port named "metrics"'):
        probes.resolve_port("metrics", ports)
    with pytest.raises(ProbeError, match="invalid port number: 70000"):
        probes.resolve_port(70000, ports)
    with pytest.raises(ProbeError, match="no port"):
        probes.resolve_port(None, ports)


def request_lines(probe: Probe, host: str = "10.244.1.5", port: int = 8080) -> list[str]:
    url, raw = probes.http_request(probe, host, port)
    assert raw.endswith(b"\r\n\r\n")
    return [url, *raw.decode().split("\r\n")[:-2]]


def test_http_request_is_the_kubelets() -> None:
    assert request_lines(http()) == [
        "http://10.244.1.5:8080/healthz",
        "GET /healthz HTTP/1.1", "Host: 10.244.1.5:8080", "User-Agent: kube-probe/1.31",
        "Accept: */*", "Connection: close"]


def test_http_request_headers() -> None:
    probe = Probe(kind="httpGet", port=8443, path="ready?full=1", scheme="HTTPS",
                  http_headers=(("x-probe", "a"), ("X-PROBE", "b"), ("host", "web.local"),
                                ("Accept", ""), ("User-Agent", "mine")))
    assert request_lines(probe, "fd00::5", 8443) == [
        "https://[fd00::5]:8443/ready?full=1",
        "GET /ready?full=1 HTTP/1.1", "Host: web.local", "User-Agent: mine",
        "X-Probe: a", "X-Probe: b", "Connection: close"]


def test_http_request_refuses_header_injection() -> None:
    bad = Probe(kind="httpGet", port=80, http_headers=(("X-A", "1\r\nX-B: 2"),))
    with pytest.raises(ProbeError, match='invalid header field value for "X-A"'):
        probes.http_request(bad, "10.0.0.1", 80)
    with pytest.raises(ProbeError, match='invalid header field name "X A"'):
        probes.http_request(Probe(kind="httpGet", port=80, http_headers=(("X A", "1"),)),
                            "10.0.0.1", 80)


def test_describe() -> None:
    assert probes.describe(LIVENESS, FAIL) == \
        "Liveness probe failed: HTTP probe failed with statuscode: 503"
    assert probes.describe(READINESS, ERR) == "Readiness probe errored: boom"


# ---------------------------------------------------------------- the model


def test_new_probe_fields_stay_out_of_repr() -> None:
    # Deployment pod names hash the template's repr: these fields must not rename pods.
    plain = Probe(kind="httpGet", port=80)
    rich = Probe(kind="httpGet", port=80, host="10.0.0.9", scheme="HTTPS",
                 http_headers=(("X-A", "1"),))
    assert repr(plain) == repr(rich) == (
        "Probe(kind='httpGet', port=80, path='/', command=(), initial_delay_seconds=0, "
        "period_seconds=10, timeout_seconds=1, success_threshold=1, failure_threshold=3)")
    assert plain != rich


def test_build_reads_the_http_fields() -> None:
    probe = build.probe({"httpGet": {"port": "http", "host": "10.0.0.9", "scheme": "HTTPS",
                                     "httpHeaders": [{"name": "X-A", "value": "1"}]},
                         "periodSeconds": 0})
    assert probe == Probe(kind="httpGet", port="http", host="10.0.0.9", scheme="HTTPS",
                          http_headers=(("X-A", "1"),), period_seconds=10)
    assert build.probe({"exec": {"command": ["cat", "/ready"]}}).command == ("cat", "/ready")


@pytest.mark.parametrize("probe", [
    http(period=3, delay=2, success_threshold=2),
    Probe(kind="httpGet", port="web", path="/x", host="10.0.0.9", scheme="HTTPS",
          http_headers=(("X-A", "1"), ("X-A", "2"))),
    Probe(kind="tcpSocket", port=53, host="10.0.0.10", timeout_seconds=4),
    Probe(kind="exec", command=("sh", "-c", "exit 0"), failure_threshold=1),
    Probe(kind="grpc", port=9000),
])
def test_probe_document_round_trips(probe: Probe) -> None:
    assert build.probe(probes.probe_document(probe)) == probe


# ---------------------------------------------------------------- ContainerProber

UNIT = 0.01  # one probe second is 10 ms


class FakeContainer:
    """Answers probes from a dict; counts them."""

    def __init__(self) -> None:
        self.answers: dict[str, Outcome] = {}
        self.calls: list[str] = []

    async def execute(self, probe: Probe, target: Target, timeout: float) -> Outcome:
        self.calls.append(probe.path)
        return self.answers.get(probe.path, OK)


async def until(condition, limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):  # a hang guard, not a timing assertion
        while not condition():
            await asyncio.sleep(0.005)


def test_prober_reports_readiness_and_restarts() -> None:
    async def main() -> None:
        fake = FakeContainer()
        ready: list[tuple[bool, str]] = []
        restarts: list[str] = []
        results: list[tuple[str, Result]] = []
        prober = ContainerProber(
            "web", Target("node", "pod", "10.244.1.5"),
            readiness=Probe(kind="httpGet", port=80, path="/ready", period_seconds=1),
            liveness=Probe(kind="httpGet", port=80, path="/live", period_seconds=1,
                           failure_threshold=2),
            on_ready=lambda ok, msg: ready.append((ok, msg)),
            on_restart=restarts.append,
            on_result=lambda kind, o: results.append((kind, o.result)),
            time_unit=UNIT, execute=fake.execute)
        prober.start()
        try:
            assert not prober.ready
            await until(lambda: prober.ready)
            assert ready == [(True, "Readiness probe succeeded")]
            fake.answers["/ready"] = failure("HTTP probe failed with statuscode: 500")
            await until(lambda: not prober.ready)
            assert ready[-1] == (False, "Readiness probe failed: HTTP probe failed with "
                                        "statuscode: 500")
            fake.answers["/live"] = failure("dead")
            await until(lambda: restarts)
            assert restarts == ["Container web failed liveness probe, will be restarted"]
            assert ("liveness", Result.FAILURE) in results
            calls = len(fake.calls)
            await asyncio.sleep(5 * UNIT)
            assert len(fake.calls) == calls  # held until the container restarts
            fake.answers.clear()
            prober.restarted()
            await until(lambda: prober.ready)
            assert len(restarts) == 1
        finally:
            await prober.stop()

    asyncio.run(main())


def test_prober_forced_faults() -> None:
    async def main() -> None:
        fake = FakeContainer()
        ready: list[bool] = []
        restarts: list[str] = []
        prober = ContainerProber(
            "web", Target("node", "pod", "10.244.1.5"),
            readiness=Probe(kind="httpGet", port=80, path="/ready", period_seconds=1),
            on_ready=lambda ok, msg: ready.append(ok), on_restart=restarts.append,
            implicit_period=2, time_unit=UNIT, execute=fake.execute)
        prober.start()
        try:
            await until(lambda: prober.ready)
            prober.force(READINESS, "broken")
            prober.force(LIVENESS, "hung")  # no liveness probe: the default one stands in
            assert prober.forced == {READINESS: "broken", LIVENESS: "hung"}
            await until(lambda: not prober.ready)
            await until(lambda: restarts)
            calls = len(fake.calls)
            prober.clear()
            prober.restarted()
            await until(lambda: prober.ready)
            assert len(fake.calls) > calls  # the container is asked again
            assert ready[:2] == [True, False] and ready[-1] is True
        finally:
            await prober.stop()
        assert prober._inflight == {}

    asyncio.run(main())


def test_prober_survives_a_failing_executor_and_callback() -> None:
    async def main() -> None:
        async def broken(probe: Probe, target: Target, timeout: float) -> Outcome:
            raise RuntimeError("executor bug")

        results: list[Outcome] = []

        def bad_callback(ok: bool, message: str) -> None:
            raise RuntimeError("callback bug")

        prober = ContainerProber(
            "web", Target("node", "pod", "10.244.1.5"),
            readiness=Probe(kind="tcpSocket", port=80, period_seconds=1),
            on_ready=bad_callback, on_result=lambda kind, o: results.append(o),
            time_unit=UNIT, execute=broken)
        prober.start()
        try:
            await until(lambda: len(results) >= 2)
            assert results[0] == errored("RuntimeError: executor bug")
            prober.force(READINESS, "x")  # the callback raises inside: the prober lives on
        finally:
            await prober.stop()

    asyncio.run(main())
