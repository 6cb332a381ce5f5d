"""A libtorrent peer for the testbed: the reference system. Runs under Debian's /usr/bin/python3
(python3-libtorrent), so it imports nothing of ours.

    lt_peer.py torrent FILE OUT.torrent      make a .torrent (libtorrent's own piece size)
    lt_peer.py peer TORRENT DIR IP:PORT [--seed] [--connect IP:PORT ...]

A peer prints JSON lines: `ready` once listening (and, for a seed, checked), `finished` with
the CLOCK_MONOTONIC time (shared by every process on the machine) when it holds the whole
file; it keeps serving until SIGTERM. No tracker, DHT or local discovery: peers are connected
directly, and again every second until connected, since a peer may start listening later.
"""

import json
import signal
import sys
import time
from pathlib import Path

import libtorrent as lt


def say(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def make_torrent(path, out):
    fs = lt.file_storage()
    lt.add_files(fs, path)
    t = lt.create_torrent(fs)
    lt.set_piece_hashes(t, str(Path(path).parent))
    with open(out, "wb") as f:
        f.write(lt.bencode(t.generate()))
    say("torrent", piece_size=t.piece_length(), pieces=t.num_pieces())


def peer(torrent, folder, listen, seed, connect):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    ses = lt.session({
        "listen_interfaces": listen,
        "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        # TCP only, like our peers, so the comparison is of the swarm logic, not of uTP's LEDBAT.
        "enable_outgoing_utp": False, "enable_incoming_utp": False,
        "alert_mask": 0,
    })
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent)
    params.save_path = folder
    handle = ses.add_torrent(params)
    peers = [(p.rsplit(":", 1)[0], int(p.rsplit(":", 1)[1])) for p in connect]
    ready = finished = False
    last_connect = 0.0
    while not stop:
        status = handle.status()
        if not ready and ses.is_listening() and (not seed or status.is_seeding):
            ready = True
            say("ready", listen=listen)
        if not finished and status.is_seeding:
            finished = True
            say("finished", t=time.monotonic())
        now = time.monotonic()
        if not finished and now - last_connect >= 1.0:
            connected = {(p.ip[0], p.ip[1]) for p in handle.get_peer_info()}
            for address in peers:
                if address not in connected:
                    handle.connect_peer(address)
            last_connect = now
        time.sleep(0.02)
    handle.flush_cache()  # the file is checked by SHA-256 once every peer has stopped
    ses.pause()
    say("stopped")


if __name__ == "__main__":
    if sys.argv[1] == "torrent":
        make_torrent(sys.argv[2], sys.argv[3])
    else:
        args = sys.argv[2:]
        connect = args[args.index("--connect") + 1:] if "--connect" in args else []
        peer(args[0], args[1], args[2], "--seed" in args, connect)
