"""File names travel between machines and end up as paths: only plain base names pass."""

from .limits import MAX_NAME_BYTES


def check_file_name(name: str) -> str:
    """Return `name` if it is safe as a single path component, else raise ValueError."""
    if not name or name in (".", ".."):
        raise ValueError("file name is empty or a dot name")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ValueError(f"file name longer than {MAX_NAME_BYTES} bytes")
    if any(c in name for c in "/\\\0") or any(ord(c) < 32 for c in name):
        raise ValueError("file name contains a path separator or a control character")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("file name is not valid UTF-8") from None
    return name
