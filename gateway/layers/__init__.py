"""Channel layers (in-memory, Redis) and the peer mirror."""
