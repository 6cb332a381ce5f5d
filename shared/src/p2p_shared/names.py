"""File names travel between machines and end up as paths, and on terminals: only plain base
names pass, with no character that a terminal or a bidi algorithm would act on."""

import re

from .limits import MAX_NAME_BYTES

# Every Unicode control character (C0, DEL, C1: category Cc), the line and paragraph separators,
# and every bidi formatting character (marks, embeddings, overrides, isolates): a name like
# "cod.\u202etxt.exe" must not show on a terminal as something it is not.
_UNSHOWABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def check_file_name(name: str) -> str:
    """Return `name` if it is safe as a single path component, else raise ValueError."""
    if not name or name in (".", ".."):
        raise ValueError("file name is empty or a dot name")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ValueError(f"file name longer than {MAX_NAME_BYTES} bytes")
    if any(c in name for c in "/\\"):
        raise ValueError("file name contains a path separator")
    if _UNSHOWABLE.search(name):
        raise ValueError("file name contains a control or bidi formatting character")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("file name is not valid UTF-8") from None
    return name
