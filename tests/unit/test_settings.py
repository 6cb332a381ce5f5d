import pytest

from p2p_leecher.main import LeecherSettings
from p2p_leecher.main import parser as leecher_parser
from p2p_seeder.main import SeederSettings
from p2p_seeder.main import parser as seeder_parser
from p2p_shared.settings import build_settings, parse_host_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:6969", ("127.0.0.1", 6969)), ("tracker:1", ("tracker", 1)), ("[::1]:80", ("::1", 80))],
)
def test_parse_host_port(text, expected):
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["nohost", ":80", "h:0", "h:70000", "h:x", "[::1]"])
def test_parse_host_port_refuses(text):
    with pytest.raises(ValueError):
        parse_host_port(text)


def test_bare_host_takes_the_default_port():
    assert parse_host_port("tracker", 6969) == ("tracker", 6969)


def test_flags_override_environment_which_overrides_defaults(monkeypatch):
    monkeypatch.setenv("P2P_PORT", "7100")
    monkeypatch.setenv("P2P_TRACKER", "tr:1")
    monkeypatch.setenv("P2P_FILE", "a.bin,b.bin")
    s = build_settings(SeederSettings, seeder_parser(), ["-p", "7200"])
    assert s.port == 7200 and s.tracker == "tr:1" and [p.name for p in s.file] == ["a.bin", "b.bin"]
    assert s.chunk_size == 512 * 1024


def test_positional_target_from_environment(monkeypatch):
    monkeypatch.setenv("P2P_TARGET", "demo.bin")
    assert build_settings(LeecherSettings, leecher_parser(), []).target == "demo.bin"
    assert build_settings(LeecherSettings, leecher_parser(), ["other"]).target == "other"


def test_bad_values_exit_2_with_one_line(capsys, monkeypatch):
    monkeypatch.delenv("P2P_TARGET", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        build_settings(LeecherSettings, leecher_parser(), ["x", "--tracker", "nocolon"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("p2p-leecher: error: tracker") and "\n" not in err


def test_empty_tls_variables_mean_no_tls(monkeypatch):
    monkeypatch.setenv("P2P_TLS_CA", "")
    assert build_settings(LeecherSettings, leecher_parser(), ["x"]).tls_ca is None


def test_swarm_secret_comes_from_the_environment_and_empty_means_none(monkeypatch):
    monkeypatch.setenv("P2P_SWARM_SECRET", "")
    assert build_settings(LeecherSettings, leecher_parser(), ["x"]).secret_bytes() is None
    monkeypatch.setenv("P2P_SWARM_SECRET", "s" * 16)
    assert build_settings(LeecherSettings, leecher_parser(), ["x"]).secret_bytes() == b"s" * 16
    monkeypatch.setenv("P2P_SWARM_SECRET", "short")
    with pytest.raises(SystemExit):
        build_settings(LeecherSettings, leecher_parser(), ["x"])
