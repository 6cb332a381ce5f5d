"""The tracker's `--registry redis+sentinel://...`: what the URL means, and what it refuses."""

import pytest
from p2p_tracker.main import TrackerSettings, redacted
from p2p_tracker.redis_store import SentinelAddress, sentinel_address
from pydantic import ValidationError


@pytest.mark.parametrize(("url", "address"), [
    ("redis+sentinel://s1:26379,s2:26380,s3:26381/p2p/0",
     SentinelAddress((("s1", 26379), ("s2", 26380), ("s3", 26381)), "p2p", 0)),
    ("redis+sentinel://sentinel/p2p", SentinelAddress((("sentinel", 26379),), "p2p", 0)),
    ("redis+sentinel://:s%40cret@10.0.0.1:26379/registry/3",
     SentinelAddress((("10.0.0.1", 26379),), "registry", 3, None, "s@cret")),
    ("rediss+sentinel://user:pw@[::1]:26379/p2p/1", SentinelAddress((("::1", 26379),), "p2p", 1, "user", "pw", True)),
])
def test_a_sentinel_url_names_the_sentinels_the_primary_its_database_and_credentials(url, address):
    assert sentinel_address(url) == address
    assert TrackerSettings(registry=url).registry == url


@pytest.mark.parametrize(("url", "said"), [
    ("redis+sentinel://s1:26379", "the path is /MASTER_NAME or /MASTER_NAME/DB"),
    ("redis+sentinel://s1:26379/p2p/0/extra", "the path is /MASTER_NAME or /MASTER_NAME/DB"),
    ("redis+sentinel://s1:0/p2p", "a sentinel is HOST:PORT, not 's1:0'"),
    ("redis+sentinel://s1:26379,/p2p", "a sentinel is HOST:PORT, not ''"),
])
def test_a_sentinel_url_that_cannot_work_is_refused_with_why(url, said):
    with pytest.raises(ValueError, match=said):
        sentinel_address(url)
    with pytest.raises(ValidationError, match=said):
        TrackerSettings(registry=url)


def test_the_password_of_a_sentinel_url_is_left_out_of_logs():
    assert redacted("redis+sentinel://:pw@s1:26379,s2:26379/p2p/0") == "redis+sentinel://:***@s1:26379,s2:26379/p2p/0"
