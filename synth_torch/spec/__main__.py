"""``python -m synth_torch.spec > docs/parameters.md`` regenerates the parameter reference."""

from synth_torch.spec.params import document

print(document(), end="")
