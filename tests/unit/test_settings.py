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
    assert s.port == 7200 and s.tracker == (("tr", 1),) and [p.name for p in s.file] == ["a.bin", "b.bin"]
    assert s.chunk_size == 512 * 1024


def test_positional_target_from_environment(monkeypatch):
    monkeypatch.setenv("P2P_TARGET", "demo.bin")
    assert build_settings(LeecherSettings, leecher_parser(), []).target == "demo.bin"
    assert build_settings(LeecherSettings, leecher_parser(), ["other"]).target == "other"


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["x", "--tracker", "nocolon"], {}, "--tracker (P2P_TRACKER) 'nocolon' is not HOST:PORT with a port from 1 to 65535"),
        (["x", "--min-seeders", "0"], {}, "--min-seeders (P2P_MIN_SEEDERS) must be at least 1, not '0'"),
        (["x"], {"P2P_MIN_SEEDERS": "many"}, "--min-seeders (P2P_MIN_SEEDERS) must be a whole number, not 'many'"),
        (["x"], {"P2P_WAIT": "soon"}, "--wait (P2P_WAIT) must be a number, not 'soon'"),
        (["x", "--max-peers", "51"], {}, "--max-peers (P2P_MAX_PEERS) must be at most 50, not '51'"),
        (["x"], {"P2P_PROGRESS": "fancy"}, "--progress (P2P_PROGRESS) must be one of 'auto', 'bar' or 'log', not 'fancy'"),
        (["x"], {"P2P_WAIT_FOR_FILE": "perhaps"}, "--wait-for-file (P2P_WAIT_FOR_FILE) must be true or false, not 'perhaps'"),
        # The secret is never echoed back.
        (["x"], {"P2P_SWARM_SECRET": "hunter2"}, "P2P_SWARM_SECRET must be at least 16 characters long"),
    ],
)
def test_bad_values_exit_2_with_one_line_naming_the_flag_and_its_variable(capsys, monkeypatch, argv, env, expected):
    monkeypatch.delenv("P2P_TARGET", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        build_settings(LeecherSettings, leecher_parser(), argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"p2p-leecher: error: {expected}\n"


def test_help_shows_every_flag_with_its_variable_and_default(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        build_settings(SeederSettings, seeder_parser(), ["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "[P2P_PORT; default: 7000]" in text
    assert "[P2P_FILE; default: large_text_file.txt]" in text
    assert "[P2P_TLS_CA; default: unset]" in text and "[P2P_NO_CACHE; default: off]" in text
    assert "(default " not in text  # said once, in the bracket
    flags = {a.dest for a in seeder_parser()._actions if a.option_strings} - {"help", "version"}
    assert all(f"[P2P_{dest.upper()}; default: " in text for dest in flags)


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_settings(LeecherSettings, leecher_parser(), ["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == "p2p-leecher 0.1.0\n"


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


def test_several_tracker_replicas_are_one_flag():
    from p2p_shared.settings import parse_trackers

    assert parse_trackers("a:6969, b:7000,[::1]:6969") == [("a", 6969), ("b", 7000), ("::1", 6969)]
    for bad in ("", ",", "a:6969,b", "a:0"):
        with pytest.raises(ValueError):
            parse_trackers(bad)


def test_a_server_raises_its_open_files_limit_to_hold_its_connection_cap_within_the_hard_limit(monkeypatch):
    import resource

    from p2p_shared.net import service

    limits = {"now": (1024, 4096)}
    monkeypatch.setattr(resource, "getrlimit", lambda kind: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda kind, value: limits.__setitem__("now", value))
    assert service.open_files_for(2048) == 2048 + service.DESCRIPTORS_BESIDES_CONNECTIONS
    assert limits["now"] == (2304, 4096)
    assert service.open_files_for(100) == 2304  # enough already: left alone
    limits["now"] = (1024, 2000)
    assert service.open_files_for(8192) == 2000  # the hard limit is the most we may take
