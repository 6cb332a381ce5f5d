"""The protocol library: everything the tracker, seeders and leechers agree on.

Modules at this level are sans-IO: no sockets, no event loop, time passed in as `now`.
The asyncio shells shared by several services live in `p2p_shared.net`.
"""

TRACKER_VERSION = 5  # the tracker's datagrams; it also answers versions 1 to 4 (see messages)
PEER_VERSION = 1  # the HELLO of the peer protocol over TCP
