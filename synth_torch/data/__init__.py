"""Datasets and batches: the layer that turns scenarios into labeled training data."""

from synth_torch.data.batch import Batch, decode_sample_id, encode_sample_id
from synth_torch.data.dataset import SliceWeights, SynthDataset

__all__ = ["Batch", "SliceWeights", "SynthDataset", "decode_sample_id", "encode_sample_id"]
