"""An answer's life: the registry of live streams, the stream, its worker and body, the keepers."""
