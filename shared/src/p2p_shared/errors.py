"""One exception hierarchy for the whole system.

Local errors mean we misused an API (a bug on our side); remote errors mean a peer or the
tracker sent bytes we refuse. OS-level failures are mapped once, at the I/O edge, to the
`PeerError` family so retry code catches only those.
"""


class P2PError(Exception):
    """Base of every expected failure; its message is one line fit for a user."""


class ProtocolError(P2PError):
    pass


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The other side sent bytes that do not form a valid message."""


class ManifestError(RemoteProtocolError):
    """A manifest that does not decode, or does not hash to the file id asked for."""


class PeerError(P2PError):
    """A peer connection failed; the chunk it was serving goes back to the plan."""


class PeerConnectError(PeerError):
    pass


class PeerTimeout(PeerError):
    pass


class PeerClosed(PeerError):
    pass


class PeerRejected(PeerError):
    """The peer answered with a typed error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class TrackerUnavailable(P2PError):
    """No answer from the tracker after every retry."""


class TrackerUnreachable(TrackerUnavailable):
    """The tracker's name does not resolve, or nothing listens on its port: known at once,
    without waiting for every retry. Services retry later; a one-shot command says so and stops."""


class TrackerRejected(P2PError):
    """The tracker answered with a typed error (mapped from its reply in the tracker client only)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"tracker refused: {code}: {message}")
        self.code = code
        self.reason = message


class HolderUnknown(TrackerRejected):
    """The tracker does not know this holder (it expired, or the tracker restarted): register again."""


class DownloadError(P2PError):
    """A download cannot finish; the message says why."""


class PeerBanned(PeerError):
    """This peer sent bad data, broke the protocol, or does not have the file: not used again
    for this download."""


class FinalExists(DownloadError):
    """The final name was taken while we downloaded (perhaps by another leecher of the same file)."""
