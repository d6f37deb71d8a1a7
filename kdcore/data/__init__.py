"""Audio data: dataset sources (class folders, CSV manifests), reading and resampling, splits,
the embedded :class:`SyntheticAudio` set and on-device augmentation."""

from kdcore.data import augment
from kdcore.data.audio import (
    AUDIO_EXTENSIONS,
    UNLABELLED,
    AudioBatch,
    AudioExample,
    AudioFileDataset,
    AudioReadError,
    TransferSet,
    center_crop,
    collate_audio,
    probe_audio,
    random_crop,
    read_audio,
    resample,
)
from kdcore.data.augment import SpecAugment, WaveAugment
from kdcore.data.digits import (
    ConnectedDigits,
    write_connected_digits,
    write_connected_digits_splits,
)
from kdcore.data.mixtures import (
    NoisyMixtures,
    TaggedMixtures,
    write_tagged_mixtures,
    write_tagging_dataset,
)
from kdcore.data.noise import NOISE_KINDS, make_noise, mix_at_snr
from kdcore.data.sources import (
    AudioRecord,
    AudioSource,
    ManifestError,
    SkippedEntry,
    load_source,
    unlabelled_files,
)
from kdcore.data.splits import group_split, split_from_column, stratified_split
from kdcore.data.synthetic import SyntheticAudio

__all__ = [
    "AUDIO_EXTENSIONS",
    "NOISE_KINDS",
    "UNLABELLED",
    "AudioBatch",
    "AudioExample",
    "AudioFileDataset",
    "AudioReadError",
    "AudioRecord",
    "AudioSource",
    "ConnectedDigits",
    "ManifestError",
    "NoisyMixtures",
    "SkippedEntry",
    "SpecAugment",
    "SyntheticAudio",
    "TaggedMixtures",
    "TransferSet",
    "WaveAugment",
    "augment",
    "center_crop",
    "collate_audio",
    "group_split",
    "load_source",
    "make_noise",
    "mix_at_snr",
    "probe_audio",
    "random_crop",
    "read_audio",
    "resample",
    "split_from_column",
    "stratified_split",
    "unlabelled_files",
    "write_connected_digits",
    "write_connected_digits_splits",
    "write_tagged_mixtures",
    "write_tagging_dataset",
]
