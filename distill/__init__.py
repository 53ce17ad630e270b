"""DMD2 training: distil your own one- or few-step generator from a diffusion teacher (see README "Distil your own")."""
