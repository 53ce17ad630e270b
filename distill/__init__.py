"""DMD2 training: distil your own one- or few-step generator."""
