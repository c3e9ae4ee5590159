"""Example handlers for `handlers:` in the config (payload type -> module:function)."""
