"""Progress output uses the README's units: sizes in MiB, rates in MB/s."""

import structlog

from p2p_leecher.progress import Progress

MIB = 1 << 20


def test_log_line_gives_sizes_in_mib():
    with structlog.testing.capture_logs() as logs:
        progress = Progress("demo.bin", total=256 * MIB, done=0, bar=False, every=0)
        progress.advance(96 * MIB)
    [line] = [entry for entry in logs if entry["event"] == "progress"]
    assert (line["done_mib"], line["total_mib"], line["percent"]) == (96.0, 256.0, 37.5)
    assert "mb_per_s" in line


def test_bar_gives_sizes_in_mib(capsys):
    progress = Progress("demo.bin", total=256 * MIB, done=0, bar=True)
    progress.advance(96 * MIB)
    progress.close()
    err = capsys.readouterr().err
    assert "96.0/256.0 MiB" in err  # rich's default would say 100.7/268.4 MB
