"""Several processes on Redis: leases, the control channel, stream slots, the mirror."""
