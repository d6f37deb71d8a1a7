"""Model factory: shapes, parameter counts against hand-counted formulas, MAC counts, size
ranges, errors, and the optional HuggingFace wrapper (skipped without transformers)."""

import importlib.util

import numpy as np
import pytest
import torch

from kdcore import models
from kdcore.models import StudentDSCNN, TeacherCNN, available_models, create

NUM_CLASSES = 7


@pytest.mark.parametrize("name, kwargs", [
    ("teacher_cnn", {"width": 8, "n_mels": 40}),
    ("student_dscnn", {"width": 8, "n_mels": 40}),
    ("transformer", {"dim": 32, "depth": 2, "heads": 2, "n_mels": 40}),
])
def test_forward_shapes_and_gradients(name, kwargs):
    model = create(name, NUM_CLASSES, **kwargs)
    for frames in (1, 37, 101):
        features = torch.randn(3, 40, frames) * 4 - 8
        logits = model(features)
        assert logits.shape == (3, NUM_CLASSES) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match=r"features must have shape \(B, 40, frames\)"):
        model(torch.randn(3, 64, 20))
    assert model.model_name == name
    rebuilt = create(name, NUM_CLASSES, **model.config())
    assert rebuilt.num_parameters() == model.num_parameters()


def _bn(channels: int) -> int:
    return 2 * channels


def test_teacher_parameter_count_matches_formula():
    width, mels = 5, 16
    channels = [width, 2 * width, 4 * width, 8 * width]
    expected = _bn(mels)
    for cin, cout in zip([1] + channels[:-1], channels, strict=True):
        expected += 9 * cin * cout + _bn(cout) + 9 * cout * cout + _bn(cout)
    expected += channels[-1] * NUM_CLASSES + NUM_CLASSES
    assert TeacherCNN(NUM_CLASSES, n_mels=mels, width=width).num_parameters() == expected


def test_student_parameter_count_matches_formula():
    width, mels = 6, 16
    expected = _bn(mels) + 9 * width + _bn(width)
    for cin, cout in [(width, width), (width, 2 * width), (2 * width, 4 * width),
                      (4 * width, 4 * width)]:
        expected += 9 * cin + _bn(cin) + cin * cout + _bn(cout)
    expected += 4 * width * NUM_CLASSES + NUM_CLASSES
    assert StudentDSCNN(NUM_CLASSES, n_mels=mels, width=width).num_parameters() == expected


def test_size_ranges_cover_the_documented_scales():
    with torch.device("meta"):  # no memory for the 80M model
        teacher_small = TeacherCNN(10, width=30).num_parameters()
        teacher_large = TeacherCNN(10, width=260).num_parameters()
        student_small = StudentDSCNN(10, width=24).num_parameters()
        student_large = StudentDSCNN(10, width=200).num_parameters()
    assert 0.9e6 < teacher_small < 1.2e6 and 70e6 < teacher_large < 85e6
    assert 18e3 < student_small < 25e3 and 0.9e6 < student_large < 1.3e6


def test_macs_match_hand_count_for_the_student():
    width, mels, frames = 4, 16, 20
    model = StudentDSCNN(3, n_mels=mels, width=width)
    # stem stride 2: 16x20 -> 8x10; block 2 -> 4x5; block 3 -> 2x3; block 4 keeps 2x3.
    expected = 8 * 10 * width * 9
    for (cin, cout), (f, t) in zip([(4, 4), (4, 8), (8, 16), (16, 16)],
                                   [(8, 10), (4, 5), (2, 3), (2, 3)], strict=True):
        expected += f * t * (9 * cin + cin * cout)
    expected += 16 * 3
    assert model.macs(frames) == expected
    assert model.macs(frames, batch_size=4) == 4 * expected


def test_transformer_macs_include_attention():
    dim, depth, mels, frames = 16, 2, 8, 20
    model = create("transformer", 3, dim=dim, depth=depth, heads=2, n_mels=mels)
    tokens = frames // 2
    per_layer = tokens * (3 * dim * dim + dim * dim + 8 * dim * dim) + 2 * tokens * tokens * dim
    expected = tokens * mels * 3 * dim + depth * per_layer + dim * 3
    assert model.macs(frames) == expected


@pytest.mark.parametrize("pooling", ["mean", "meanmax"])
def test_student_pooling_against_a_float64_reference(pooling):
    torch.manual_seed(0)
    model = create("student_dscnn", NUM_CLASSES, n_mels=24, width=6, pooling=pooling).eval()
    features = torch.randn(3, 24, 37) * 4
    captured = {}

    def keep_maps(module, args, output):
        captured["maps"] = output.detach().double().numpy()

    model.blocks[-1].register_forward_hook(keep_maps)
    logits = model(features)
    maps = captured["maps"]  # (B, C, F, T)
    if pooling == "mean":
        pooled = maps.mean(axis=(2, 3))
    else:
        over_frequency = maps.mean(axis=2)
        pooled = over_frequency.mean(axis=2) + over_frequency.max(axis=2)
    weight = model.classifier.weight.detach().double().numpy()
    bias = model.classifier.bias.detach().double().numpy()
    expected = pooled @ weight.T + bias
    torch.testing.assert_close(logits.double(), torch.from_numpy(expected), rtol=1e-5,
                               atol=1e-5)
    rebuilt = create("student_dscnn", NUM_CLASSES, **model.config())
    assert rebuilt.pooling == pooling
    assert rebuilt.num_parameters() == StudentDSCNN(NUM_CLASSES, n_mels=24, width=6
                                                   ).num_parameters()


def test_student_pooling_is_checked():
    with pytest.raises(ValueError, match="pooling must be one of .*'max'"):
        create("student_dscnn", NUM_CLASSES, pooling="max")


def test_factory_errors_are_clear():
    assert {"teacher_cnn", "student_dscnn", "transformer", "hf"} <= set(available_models())
    with pytest.raises(ValueError, match="unknown model 'resnet9000'.*student_dscnn"):
        create("resnet9000", 10)
    with pytest.raises(TypeError, match="model 'student_dscnn'.*depth"):
        create("student_dscnn", 10, depth=3)
    with pytest.raises(ValueError, match="width"):
        create("teacher_cnn", 10, width=0)
    with pytest.raises(ValueError, match="num_classes"):
        create("transformer", 1)
    assert models.count_parameters(torch.nn.Linear(3, 2)) == 8


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                    reason="transformers is not installed: it is the optional 'hf' extra, "
                           "which the test extra and CI leave out (a large download); "
                           "pip install 'kdcore[hf]' to run this cross-check")
def test_hf_wrapper_loads_local_tiny_ast(tmp_path):
    from transformers import ASTConfig, ASTForAudioClassification

    config = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_mel_bins=32, max_length=48,
                       frequency_stride=16, time_stride=16, num_labels=5)
    torch.manual_seed(0)
    reference = ASTForAudioClassification(config).eval()
    reference.save_pretrained(tmp_path)

    wrapped = create("hf", 5, path=tmp_path).eval()
    assert wrapped.n_mels == 32
    assert wrapped.num_parameters() == sum(p.numel() for p in reference.parameters())
    features = torch.randn(2, 32, 40)
    with torch.no_grad():
        ours = wrapped(features)
        padded = torch.nn.functional.pad(features, (0, 8)).transpose(1, 2)
        theirs = reference(input_values=padded).logits
    assert ours.shape == (2, 5)
    torch.testing.assert_close(ours, theirs)
    assert wrapped.macs(40) > 0
    with pytest.raises(ValueError, match="num_classes=3.*5 labels"):
        create("hf", 3, path=tmp_path)
    with pytest.raises(ValueError, match="config.json"):
        create("hf", 5, path=tmp_path / "nowhere")


def test_teacher_ensemble_averages_member_logits():
    torch.manual_seed(0)
    members = [create("teacher_cnn", 7, n_mels=16, width=4),
               create("teacher_cnn", 7, n_mels=16, width=6),
               create("student_dscnn", 7, n_mels=16, width=4)]
    ensemble = models.TeacherEnsemble(members).eval().double()
    features = 3 * torch.randn(5, 16, 23, dtype=torch.float64)
    with torch.no_grad():
        logits = ensemble(features)
        expected = sum(member(features) for member in members) / 3  # members are float64 now
    assert logits.shape == (5, 7)
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)
    assert ensemble.num_parameters() == sum(
        p.numel() for member in members for p in member.parameters())
    assert ensemble.macs(23) == sum(member.macs(23) for member in members)
    assert (ensemble.n_mels, ensemble.num_classes) == (16, 7)


def test_teacher_ensemble_refuses_mismatched_or_no_members():
    with pytest.raises(ValueError, match="members must hold at least one"):
        models.TeacherEnsemble([])
    with pytest.raises(ValueError, match="members must all report the same"):
        models.TeacherEnsemble([create("teacher_cnn", 7, n_mels=16, width=4),
                                create("teacher_cnn", 5, n_mels=16, width=4)])
    with pytest.raises(ValueError, match="members must all report the same"):
        models.TeacherEnsemble([torch.nn.Linear(3, 3)])


def test_transformer_layer_against_float64_sdpa():
    """One encoder layer (eval) against a float64 re-derivation from its weights: pre-norm,
    q/k/v as the three row blocks of ``qkv``, heads as contiguous slices,
    ``scaled_dot_product_attention``, output projection, exact-GELU MLP, two residuals."""
    import torch.nn.functional as F

    torch.manual_seed(1)
    model = create("transformer", NUM_CLASSES, n_mels=16, dim=24, depth=2, heads=3).eval()
    for layer in model.layers:
        for norm in (layer.norm1, layer.norm2):  # non-trivial affine LayerNorms
            torch.nn.init.normal_(norm.weight, 1.0, 0.3)
            torch.nn.init.normal_(norm.bias, 0.0, 0.3)
    x = torch.randn(2, 11, 24) * 2
    for layer in model.layers:
        with torch.no_grad():
            got = layer(x)
        p = {name: value.detach().double() for name, value in layer.named_parameters()}
        h = F.layer_norm(x.double(), (24,), p["norm1.weight"], p["norm1.bias"], 1e-5)
        q, k, v = (h @ p["qkv.weight"][i * 24:(i + 1) * 24].T + p["qkv.bias"][i * 24:(i + 1) * 24]
                   for i in range(3))
        heads = [t.view(2, 11, 3, 8).transpose(1, 2) for t in (q, k, v)]
        attended = F.scaled_dot_product_attention(*heads).transpose(1, 2).reshape(2, 11, 24)
        y = x.double() + attended @ p["proj.weight"].T + p["proj.bias"]
        h2 = F.layer_norm(y, (24,), p["norm2.weight"], p["norm2.bias"], 1e-5)
        hidden = F.gelu(h2 @ p["mlp.0.weight"].T + p["mlp.0.bias"])
        expected = y + hidden @ p["mlp.3.weight"].T + p["mlp.3.bias"]
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
        x = got


def _conv3x3_numpy(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(Cin, F, T) with zero padding 1, weight (Cout, Cin, 3, 3) -> (Cout, F, T), by shifts."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    frames, length = x.shape[1:]
    out = np.zeros((weight.shape[0], frames, length))
    for di in range(3):
        for dj in range(3):
            window = padded[:, di:di + frames, dj:dj + length]
            out += np.einsum("oc,cft->oft", weight[:, :, di, dj], window)
    return out


def _avg_pool2_ceil_numpy(x: np.ndarray) -> np.ndarray:
    """2x2 average pooling with a partial last window averaging the cells it covers."""
    channels, rows, cols = x.shape
    out = np.zeros((channels, -(-rows // 2), -(-cols // 2)))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            out[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(1, 2))
    return out


def test_teacher_cnn_against_an_independent_float64_computation():
    """TeacherCNN (eval) against numpy float64: per-mel BatchNorm, 3x3 convs by shifted sums,
    BatchNorm with random running statistics, ReLU, 2x2 pooling (odd sizes: the last window
    averages what it covers), mean over frequency, mean + max over time, linear."""
    torch.manual_seed(2)
    model = create("teacher_cnn", NUM_CLASSES, n_mels=10, width=2).eval()
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.normal_(0.0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            torch.nn.init.normal_(module.weight, 1.0, 0.3)
            torch.nn.init.normal_(module.bias, 0.0, 0.3)
    features = torch.randn(2, 10, 13) * 3
    with torch.no_grad():
        logits = model(features).double().numpy()

    def batch_norm(x: np.ndarray, module: torch.nn.Module) -> np.ndarray:
        stats = [t.detach().double().numpy() for t in (module.running_mean, module.running_var,
                                                       module.weight, module.bias)]
        mean, var, weight, bias = (s.reshape(-1, *([1] * (x.ndim - 1))) for s in stats)
        return (x - mean) / np.sqrt(var + module.eps) * weight + bias

    for row in range(2):
        x = batch_norm(features[row].double().numpy(), model.input_norm)[None]
        for index, block in enumerate(model.blocks):
            for conv, norm in ((block[0], block[1]), (block[3], block[4])):
                x = np.maximum(batch_norm(_conv3x3_numpy(
                    x, conv.weight.detach().double().numpy()), norm), 0.0)
            if index < 3:
                x = _avg_pool2_ceil_numpy(x)
        over_frequency = x.mean(axis=1)
        pooled = over_frequency.mean(axis=1) + over_frequency.max(axis=1)
        expected = (pooled @ model.classifier.weight.detach().double().numpy().T
                    + model.classifier.bias.detach().double().numpy())
        np.testing.assert_allclose(logits[row], expected, rtol=1e-5, atol=1e-5)
