"""The demo guest and the cache it is built into."""
