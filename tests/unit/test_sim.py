"""The swarm simulator (bench/sim): its network model, its determinism, and that its decisions
are the library's own (a policy changed in the library changes what it finds)."""

from __future__ import annotations

import json

import pytest

from bench.sim.__main__ import main, rate
from bench.sim.network import GOODPUT, Clock, Endpoint, Network
from bench.sim.run import knobs, run_scenario
from bench.sim.scenarios import HostSpec, Scenario, bound, churn, heterogeneous, lying_peer, one_to_many
from p2p_shared import offers

MB = 1e6


def test_flows_share_an_uplink_evenly_and_a_slow_downlink_leaves_its_share_to_the_other():
    clock = Clock()
    net = Network(clock)
    server = Endpoint(8 * MB, 8 * MB, 0)  # bytes per second, before GOODPUT
    fast, slow = Endpoint(80 * MB, 80 * MB, 0), Endpoint(80 * MB, 1 * MB, 0)
    done = {}
    net.start(server, fast, 10_000_000, lambda: done.setdefault("fast", clock.now))
    net.start(server, slow, 1_000_000, lambda: done.setdefault("slow", clock.now))
    clock.run()
    # The slow downlink takes 1 MB/s of the 8; the fast flow gets the other 7 while both run.
    slow_rate = 1 * MB * GOODPUT
    assert done["slow"] == pytest.approx(1_000_000 / slow_rate)
    fast_bytes_then = (8 - 1) * MB * GOODPUT * done["slow"]
    assert done["fast"] == pytest.approx(done["slow"] + (10_000_000 - fast_bytes_then) / (8 * MB * GOODPUT))
    assert server.sent == 11_000_000 and fast.received == 10_000_000


def test_a_downlink_shared_by_two_senders_is_never_oversubscribed():
    clock = Clock()
    net = Network(clock)
    a, b = Endpoint(10 * MB, 10 * MB, 0), Endpoint(10 * MB, 10 * MB, 0)
    sink = Endpoint(10 * MB, 4 * MB, 0)
    flows = [net.start(a, sink, 1_000_000, lambda: None), net.start(b, sink, 1_000_000, lambda: None)]
    assert sum(f.rate for f in flows) == pytest.approx(4 * MB * GOODPUT)


def test_one_seeder_one_peer_takes_the_file_over_the_link_plus_set_up():
    scenario = one_to_many(1, mbit=100, size_mib=8)
    summary, result = run_scenario(scenario)
    wire_time = 8 * (1 << 20) * 8 / (100e6 * GOODPUT)
    assert summary["complete"] == 1 and summary["origin_amplification"] == 1.0
    assert wire_time < summary["t_all_s"] < wire_time + 0.1  # a lookup, a manifest, round trips of 1 ms
    assert summary["bound_s"] == pytest.approx(8 * (1 << 20) * 8 / 100e6, abs=0.01)


def test_the_same_seed_gives_the_same_run_and_peers_share():
    scenario = one_to_many(24, mbit=100, size_mib=16)
    first, _ = run_scenario(scenario, seed=7)
    second, _ = run_scenario(scenario, seed=7)
    for summary in (first, second):
        summary.pop("wall_s"), summary.pop("us_per_event")
    assert first == second
    assert first["complete"] == 24
    # 24 copies went out, the seeder sent about one: the peers passed the rest on.
    assert first["origin_amplification"] < 1.2
    assert first["t_all_s"] < first["no_sharing_s"] / 5


def test_a_policy_changed_in_the_library_changes_the_result(monkeypatch):
    """Super-seeding is the library's (OfferBook): if it offered every chunk to everyone, the
    simulated origin would send more copies of the file."""
    scenario = one_to_many(8, mbit=100, size_mib=16)
    before, _ = run_scenario(scenario, seed=3)

    def offer_anything(self, conn, now):
        holds, offered = self._holds[conn], self._offered[conn]
        return next((i for i in range(self.num_chunks) if i not in holds and i not in offered), None)

    monkeypatch.setattr(offers.OfferBook, "_next_for", offer_anything)
    after, _ = run_scenario(scenario, seed=3)
    assert before["origin_amplification"] <= 1.05
    assert after["origin_amplification"] > before["origin_amplification"] + 0.5


def test_a_knob_reaches_the_library_objects():
    scenario = one_to_many(16, mbit=100, size_mib=16)
    default, _ = run_scenario(scenario, seed=2)
    no_super_seed, _ = run_scenario(scenario, knobs(super_seed=False), seed=2)
    assert no_super_seed["origin_amplification"] > default["origin_amplification"]


def test_a_killed_origin_and_peers_leaving_midway_the_others_still_finish():
    scenario = churn(30, mbit=100, leave_share=0.2, leave_after=0.5, origin_dies_at=1.0, size_mib=16)
    summary, result = run_scenario(scenario, seed=1)
    assert summary["left"] == 6 and summary["failed"] == 0 and summary["complete"] == 24


def test_lying_peers_are_dropped_and_everyone_else_gets_the_file():
    summary, result = run_scenario(lying_peer(12, liars=2, size_mib=8), seed=1)
    assert summary["complete"] == 12 and summary["failed"] == 0


def test_the_bound_in_its_general_form():
    seeder = HostSpec(100e6, 100e6)
    fast, slow = HostSpec(100e6, 100e6), HostSpec(10e6, 10e6)
    f_bits = 64 * (1 << 20) * 8
    # The slow downlink sets it: F / d_min.
    assert bound(64 << 20, [seeder], [fast, slow]) == pytest.approx(f_bits / 10e6)
    # Many peers: N F / (u_s + sum u_i).
    many = [fast] * 8 + [slow] * 2
    assert Scenario("x", "x", (seeder,), tuple(many)).bound() == pytest.approx(max(f_bits / 10e6, 10 * f_bits / (100e6 + 820e6)))
    hetero = heterogeneous(10, mbit=100, slow_share=0.2, slow_factor=10, size_mib=8)
    summary, _ = run_scenario(hetero, seed=1)
    assert summary["fast_bound_s"] < summary["bound_s"]  # the fast ones' own bound ignores the slow downlinks
    assert summary["fast_t_all_s"] <= summary["t_all_s"]


def test_command_line_prints_one_json_object_last(capsys):
    assert main(["--peers", "4", "--size-mib", "4", "--up", "50mbit", "--down", "100mbit", "--seed", "3"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    for key in ("t_all_s", "p50_s", "p99_s", "bound_s", "ratio_to_bound", "origin_amplification", "events", "wall_s"):
        assert key in summary
    assert summary["peers"] == 4 and summary["complete"] == 4
    assert rate("100mbit") == 100e6 and rate("1.5gbit") == 1.5e9 and rate("2000") == 2000
