import pytest

from p2p_shared.ratelimit import TokenBucket


def test_long_run_rate_holds_for_chunks_larger_than_the_bucket():
    bucket = TokenBucket(rate=1000, now=0.0, burst=100)
    now = 0.0
    for _ in range(50):
        now += bucket.reserve(300, now)  # wait as told, then send
    # 50 x 300 bytes, of which the first 100 came from the initial burst.
    assert now == pytest.approx((50 * 300 - 100) / 1000)


def test_idle_time_refills_only_up_to_the_burst():
    bucket = TokenBucket(rate=1000, now=0.0, burst=100)
    assert bucket.reserve(100, 0.0) == 0
    assert bucket.reserve(100, 1000.0) == 0  # long idle: still only 100 tokens
    assert bucket.reserve(100, 1000.0) == pytest.approx(0.1)


def test_rate_must_be_positive():
    with pytest.raises(ValueError):
        TokenBucket(rate=0, now=0)


def test_retry_delays_fit_a_budget():
    from p2p_shared.retry import backoff_delays, fit_budget

    assert backoff_delays(0.5, 5) == [0.5, 1, 2, 4, 8]
    assert fit_budget([0.5, 1, 2, 4, 8], 1.0) == [0.5, 0.5]
    assert sum(fit_budget([0.5, 1, 2, 4, 8], 30)) == 15.5


def test_address_limiter_holds_each_address_to_its_rate():
    from p2p_shared.ratelimit import AddressLimiter

    limiter = AddressLimiter(rate=10, burst=5, max_addresses=2)
    assert sum(limiter.allow("a", 0.0) for _ in range(20)) == 5  # the burst, then nothing
    assert limiter.allow("b", 0.0)  # other addresses are not affected
    assert sum(limiter.allow("a", 1.0) for _ in range(20)) == 5  # a second later: refilled to the burst
    limiter.allow("c", 1.0)  # a third address evicts the least recently seen (b)
    assert len(limiter) == 2
