"""Model shapes, options, encoder levels and user-facing errors (xtc/models)."""

from __future__ import annotations

import pytest
import torch

import xtc.config
from xtc.models import METHODS, Encoder, TaskTransferNet, build_model, build_model_from_config
from xtc.registry import UnknownNameError

K = 5
TINY = dict(decoder_width=16, transfer_width=8)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 64, 128)


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_outputs(method: str, images: torch.Tensor) -> None:
    model = build_model(method, K, "resnet18", **TINY)
    out = model(images)
    expected = {"stl-seg": {"seg"}, "stl-depth": {"depth"}, "stl-normal": {"normal"},
                "mtl": {"seg", "depth"}, "xtc": {"seg", "depth", "seg2depth", "depth2seg"}}[method]
    assert set(out) == expected
    shapes = {"seg": (2, K, 64, 128), "depth": (2, 1, 64, 128), "seg2depth": (2, 1, 64, 128),
              "depth2seg": (2, K, 64, 128), "normal": (2, 3, 64, 128)}
    for key, value in out.items():
        assert value.shape == shapes[key], key
    assert model.method == method
    assert set(model.tasks) == set(model.decoders) == expected & {"seg", "depth", "normal"}
    assert model.num_classes == K
    assert (model.transfer is not None) == (method == "xtc")


def test_direct_only_skips_transfer(images: torch.Tensor) -> None:
    model = build_model("xtc", K, "resnet18", **TINY).eval()
    with torch.no_grad():
        full, direct = model(images), model(images, direct_only=True)
    assert set(direct) == {"seg", "depth"}
    torch.testing.assert_close(full["seg"], direct["seg"])
    assert set(model.transfer) == {"seg2depth", "depth2seg"}


def test_transfer_batch_norm_option() -> None:
    model = build_model("xtc", K, "resnet18", transfer_batch_norm=True, **TINY)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.transfer.modules())
    plain = build_model("xtc", K, "resnet18", **TINY)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.transfer.modules())


@pytest.mark.parametrize("name, channels", [("resnet18", (64, 64, 128, 256, 512)),
                                            ("resnet34", (64, 64, 128, 256, 512)),
                                            ("resnet50", (64, 256, 512, 1024, 2048))])
def test_encoder_levels(name: str, channels: tuple) -> None:
    enc = Encoder(name)
    assert enc.channels == channels
    feats = enc(torch.rand(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
    assert [f.shape[1] for f in feats] == list(channels)


def test_last_shared_layer_is_last_conv() -> None:
    model = build_model("mtl", K, "resnet18", **TINY)
    assert model.last_shared_layer() is model.encoder.backbone.layer4[-1].conv2.weight


def test_paper_parameter_count() -> None:
    # docs/method.md §2.4: ResNet-34, C=7, xtc = 31.55 M parameters, direct-only 27.79 M.
    model = build_model("xtc", 7, "resnet34")
    total = sum(p.numel() for p in model.parameters())
    transfer = sum(p.numel() for p in model.transfer.parameters())
    assert round(total / 1e6, 2) == 31.55
    assert round((total - transfer) / 1e6, 2) == 27.79


@pytest.mark.parametrize("shape", [(2, 3, 60, 64), (2, 1, 64, 64), (3, 64, 64)])
def test_bad_input_shape(shape: tuple) -> None:
    model = build_model("mtl", K, "resnet18", **TINY)
    with pytest.raises(ValueError, match="divisible by 32|B, 3, H, W"):
        model(torch.rand(*shape))


def test_transfer_net_shape_error() -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        TaskTransferNet(1, K, width=4)(torch.rand(1, 1, 12, 16))


def test_unknown_method_lists_names() -> None:
    with pytest.raises(UnknownNameError, match="stl-seg"):
        build_model("nope", K)


def test_unknown_encoder() -> None:
    with pytest.raises(ValueError, match="not a timm model"):
        Encoder("resnet_does_not_exist")


def test_encoder_without_five_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model",
                        lambda name, **kw: real(name, out_indices=(1, 2, 3, 4), **kw))
    with pytest.raises(ValueError, match="five levels"):
        Encoder("resnet18")


def test_pretrained_failure_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    real = timm.create_model

    def fake(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("no network")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", fake)
    with pytest.raises(RuntimeError, match="model.pretrained=false") as info:
        build_model("mtl", K, "resnet18", pretrained=True, **TINY)
    assert isinstance(info.value.__cause__, OSError)
    assert "could not be downloaded" in str(info.value)


def test_pretrained_offline_really_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    # Offline and with an empty cache, so the test never touches the network nor a real cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"),
                        raising=False)
    with pytest.raises(RuntimeError, match="pretrained ImageNet weights"):
        Encoder("resnet18", pretrained=True)


def test_build_model_from_config() -> None:
    cfg = xtc.config.load(None, ["model.method=xtc", "model.encoder=resnet18",
                                 "model.decoder_width=16", "model.transfer_width=8"])
    model = build_model_from_config(cfg, num_classes=3)
    assert model.method == "xtc" and model.num_classes == 3
    assert model.decoders["seg"].head.out_channels == 3
    assert model.decoders["seg"].head.in_channels == 16


def test_input_normalisation_inside_model() -> None:
    model = build_model("stl-depth", K, "resnet18", **TINY)
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert "mean" not in model.state_dict()  # constants, not checkpoint state
