"""FSDD integration (real 8 kHz recordings in ../shared/data/fsdd); skipped when absent."""

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
from torch.utils.data import DataLoader

from kdcore.data import collate_audio, group_split, load_source, split_from_column

FSDD = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "fsdd"
pytestmark = pytest.mark.skipif(not (FSDD / "manifest.csv").is_file(),
                                reason=f"FSDD not found at {FSDD}")
SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]


@pytest.fixture(scope="module")
def fsdd():
    return load_source(FSDD / "manifest.csv")


def test_fsdd_manifest_and_held_out_speaker(fsdd):
    assert len(fsdd.records) == 3000 and not fsdd.skipped
    assert fsdd.classes == [str(d) for d in range(10)]
    speakers = fsdd.groups("speaker")
    assert sorted(set(speakers)) == SPEAKERS
    assert np.bincount(fsdd.labels).tolist() == [300] * 10

    own = split_from_column([r.split for r in fsdd.records])
    assert len(own["train"]) == 2700 and len(own["test"]) == 300

    split = group_split(speakers, test_groups=["theo"])
    assert len(split["test"]) == 500 and len(split["train"]) == 2500
    assert {speakers[i] for i in split["test"]} == {"theo"}
    assert "theo" not in {speakers[i] for i in split["train"]}
    seeded = group_split(speakers, test_fraction=1 / 6, seed=1)
    assert len({speakers[i] for i in seeded["test"]}) == 1 and len(seeded["test"]) == 500


def test_fsdd_resampled_variable_length_batches(fsdd):
    indices = list(range(0, 3000, 300))
    dataset = fsdd.dataset(indices, sample_rate=16000)
    loader = DataLoader(dataset, batch_size=5, collate_fn=collate_audio)
    for batch in loader:
        assert batch.waveforms.shape == (5, int(batch.lengths.max()))
        for row, index in enumerate(batch.indices.tolist()):
            native = soundfile.info(os.fspath(fsdd.records[indices[index]].path)).frames
            assert int(batch.lengths[row]) == 2 * native
            assert float(batch.waveforms[row, batch.lengths[row]:].abs().sum()) == 0.0
    fixed = fsdd.dataset(indices, sample_rate=8000, clip_samples=4000, train=True)
    assert {tuple(fixed[i].waveform.shape) for i in range(len(fixed))} == {(4000,)}
