"""One exception hierarchy for the whole system: every error class of the library and the services.

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


class FileNotFound(DownloadError):
    """The tracker knows no live holder of this file (one lookup said so)."""


class NoHolder(DownloadError):
    """The file is known, but no holder could be reached, or none sent a valid manifest, in time."""


class CacheFull(DownloadError):
    """A file does not fit in the cache, even after evicting every file not in use."""


# -- the swarm secret and the peer handshake ----------------------------------------------------


class AuthError(RemoteProtocolError):
    """A message that fails the swarm secret: wrong mac, stale, or replayed."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"not authenticated: {reason}")
        self.reason = reason


class HandshakeRefused(RemoteProtocolError):
    """The client failed the handshake; `error` is the frame to send before closing."""

    def __init__(self, code, message: str) -> None:  # code: a wire.ErrorCode
        from .wire import Error

        super().__init__(message)
        self.error = Error(code, message)


class Refusal(RemoteProtocolError):
    """A peer's request a holder answers with an ERROR frame (and, if `close`, hangs up after)."""

    def __init__(self, code, message: str, file_id: bytes = bytes(32), index: int = 0, close: bool = False) -> None:
        super().__init__(message)  # code: a wire.ErrorCode
        self.code, self.file_id, self.index, self.close = code, file_id, index, close


class BadTarget(P2PError):
    """What an HTTP request names is neither a file id nor a file name."""


class Unsatisfiable(P2PError):
    """An HTTP range that starts past the end of the file (416)."""


# -- the tracker's registry and its store ---------------------------------------------------------


class Refused(Exception):
    """A registry operation turned down; `reason` is its metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RegistryFull(Refused):
    """A cap is reached: `holders`, `holders_per_address`, `files`, `files_per_address`, `files_per_holder`, `leases`."""


class NotRegistrant(Refused):
    """Another sender registered this holder."""

    def __init__(self, key: tuple[str, int]) -> None:
        super().__init__("not_registrant", f"{key[0]}:{key[1]} was registered by another sender")


class StoreUnavailable(P2PError):
    """The store did not answer in time, or not at all; `reason` is its metric label."""

    def __init__(self, reason: str, message: str) -> None:  # reason: "timeout" or "connection"
        super().__init__(message)
        self.reason = reason
