"""Datasets and batches: the layer that turns scenarios into labeled training data, reads real datasets and
mixes the two on a hybrid schedule."""

from synth_torch.data.batch import Batch, decode_sample_id, encode_sample_id
from synth_torch.data.dataset import SynthDataset
from synth_torch.data.hybrid import SCHEDULES, HybridBatch, HybridSchedule, HybridStream
from synth_torch.data.mixture import MixtureSnapshot, SliceMixture, StreamCursor
from synth_torch.data.real import RealBatch, RealDataset, open_real

__all__ = ["SCHEDULES", "Batch", "HybridBatch", "HybridSchedule", "HybridStream", "MixtureSnapshot", "RealBatch",
           "RealDataset", "SliceMixture", "StreamCursor", "SynthDataset", "decode_sample_id", "encode_sample_id",
           "open_real"]
