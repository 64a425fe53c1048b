"""synth-torch."""
