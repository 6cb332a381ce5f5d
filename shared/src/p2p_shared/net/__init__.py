"""The asyncio and socket shells shared by several services (the only I/O in this package)."""
