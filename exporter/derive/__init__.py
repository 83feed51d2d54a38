"""Pure, I/O-free derivations shared by all engines: windows, deltas, ratios, load time."""
