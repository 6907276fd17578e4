"""One module per dashboard tab: each builds its layout first, wires its events at the bottom, and returns the
components other tabs need."""
