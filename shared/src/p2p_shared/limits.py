"""Hard limits of the protocol, checked before anything is allocated."""

MAX_DATAGRAM = 8192  # bytes in one tracker datagram, request or answer
MAX_CHUNK_SIZE = 16 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 512 * 1024
MAX_CHUNKS = 1 << 20  # 512 GiB at the default chunk size; a 32 MiB manifest
MAX_FILE_SIZE = (1 << 63) - 1
MAX_NAME_BYTES = 255
MAX_HOST_CHARS = 253
MAX_FILES_PER_REGISTER = 16  # a registration of 16 long names still fits MAX_DATAGRAM
MAX_PEERS_PER_ANSWER = 50
MAX_FILES_PER_ANSWER = 16
MAX_CONTROL_FRAME = 4096  # body of any peer frame other than MANIFEST and CHUNK
MAX_ERROR_TEXT = 512
