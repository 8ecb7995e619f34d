"""The architectures of docs/models.md: the Kaggle 580x420 input through the documented size
policy, presence heads, run-folder round trips, the seeds' parameter counts, sharp skips,
decoder activations, option checks, and short CLI runs.

Forward/backward runs use batch 1 and the smallest widths each architecture allows, so the file
stays fast on a busy CPU; parameter counts are taken on the meta device (nothing allocated).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nerveseg_cli.classes import Classes
from nerveseg_cli.geometry import Geometry
from nerveseg_cli.io.runs import BEST, RunConfig, load_run, save_weights, write_config
from nerveseg_cli.models import ModelConfig, SegmentationNet, build_model, count_parameters
from nerveseg_cli.models.blocks import SharpenSkip
from nerveseg_cli.models.unet_family import SIZE_MULTIPLE, UNetSkeleton
from nerveseg_cli.train.data import choose_geometry
from tests.conftest import assert_one_line_error, run_cli, synth_with_folds

KAGGLE_HEIGHT, KAGGLE_WIDTH = 420, 580
TINY = ["--epochs", "1", "--batch-size", "4", "--device", "cpu", "--workers", "1"]



def build(arch: str, extra: dict | None = None, *, presence: bool = False,
          encoder: str = "resnet18") -> SegmentationNet:
    return build_model(ModelConfig(arch, encoder, "none", 1, None, presence, extra))


def parameters_and_statistics(model: nn.Module) -> tuple[int, int]:
    """Trainable parameters, and that plus batch-norm running statistics (Keras' total)."""
    parameters = count_parameters(model)
    statistics = sum(b.numel() for name, b in model.named_buffers()
                     if name.endswith(("running_mean", "running_var")))
    return parameters, parameters + statistics


class ArchitectureContract:
    """What every architecture promises; subclasses name the architecture and its options."""

    arch: str
    extra: dict | None = None
    encoder: str = "resnet18"
    multiple: int = 16

    def model(self, presence: bool) -> SegmentationNet:
        torch.manual_seed(0)
        return build(self.arch, self.extra, presence=presence, encoder=self.encoder)

    def test_forward_backward_at_kaggle_size(self) -> None:
        """580x420 is padded to the architecture's multiple (the default size policy), the
        logits cover the canvas, the presence logit is one per image, every parameter gets a
        finite gradient, and the map crops back to 580x420."""
        model = self.model(presence=True).train()
        assert model.size_multiple == self.multiple and model.has_presence
        geometry = choose_geometry(None, True, model.size_multiple,
                                   [(KAGGLE_HEIGHT, KAGGLE_WIDTH)])
        assert geometry.mode == "pad"
        assert (geometry.width, geometry.height) == (-(-KAGGLE_WIDTH // self.multiple)
                                                     * self.multiple,
                                                     -(-KAGGLE_HEIGHT // self.multiple)
                                                     * self.multiple)
        image = np.random.default_rng(0).integers(0, 256, (KAGGLE_HEIGHT, KAGGLE_WIDTH),
                                                  dtype=np.uint8)
        x = torch.from_numpy(geometry.forward(image))[None, None].float() / 255
        logits, presence = model(x)
        assert logits.shape == (1, 1, geometry.height, geometry.width)
        assert presence is not None and presence.shape == (1,)
        (logits.mean() + presence.sum()).backward()
        for name, parameter in model.named_parameters():
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all(), name
        back = geometry.backward(torch.sigmoid(logits.detach()), KAGGLE_HEIGHT, KAGGLE_WIDTH)
        assert back.shape == (1, 1, KAGGLE_HEIGHT, KAGGLE_WIDTH)

    def test_run_folder_round_trip(self, tmp_path: Path) -> None:
        """Saved and rebuilt from config.json alone, the model gives the same outputs; without
        a presence head the second output is None."""
        model = self.model(presence=False).eval()
        config = ModelConfig(self.arch, self.encoder, "none", 1, None, False, self.extra)
        write_config(tmp_path, RunConfig(config, Geometry("pad", 64, 64), 0.4, 0.2,
                                         {"arch": self.arch}))
        save_weights(model, tmp_path / BEST)
        saved, loaded = load_run(tmp_path)
        assert saved.model == config
        x = torch.randn(2, 1, 64, 64)
        with torch.no_grad():
            expected, presence = model(x)
            actual, _ = loaded(x)
        assert presence is None
        torch.testing.assert_close(actual, expected)


class TestUnetPlain(ArchitectureContract):
    arch, extra = "unet-plain", {"width": 4}


class TestSharpUnet(ArchitectureContract):
    arch, extra = "sharp-unet", {"width": 4, "batch_norm": True, "activation": "leakyrelu"}


class TestAttentionUnet(ArchitectureContract):
    arch, extra = "attention-unet", {"width": 4}


class TestAttentionResUnet(ArchitectureContract):
    arch, extra = "attention-resunet", {"width": 4, "activation": "swish"}


class TestR2Unet(ArchitectureContract):
    arch, extra = "r2unet", {"width": 4, "batch_norm": True}


class TestInceptionUnet(ArchitectureContract):
    arch, extra = "inception-unet", {"width": 16}


class TestFcn32s(ArchitectureContract):
    arch, extra, multiple = "fcn32s", {"width": 8}, 32


class TestFcn16s(ArchitectureContract):
    arch, extra, multiple = "fcn16s", {"width": 8}, 32


class TestFcn8s(ArchitectureContract):
    arch, extra, multiple = "fcn8s", {"width": 8, "batch_norm": True}, 32


class TestRagcmWithSharpSkipsAndMish(ArchitectureContract):
    """RPA, APF, sharp skips and a decoder activation on smp's unet, all at once."""

    arch, extra, multiple = "ragcm", {"skip": "sharp", "activation": "mish"}, 32


# --------------------------------------------------------------------------------------------
# parameter counts (seed 001 Table I, seed 003)


@pytest.mark.parametrize(("arch", "extra", "presence", "expected", "with_statistics"), [
    ("unet-plain", None, False, 7_759_521, False),  # seed 001 U-Net, seed 003 "7.8 million"
    ("sharp-unet", None, False, 7_759_521, False),  # sharp blocks add nothing
    ("r2unet", None, False, 6_003_009, False),  # seed 001 R2U-Net, 16 filters
    ("attention-resunet", None, False, 9_786_857, True),  # seed 001 AttResUNet (Keras total)
    ("inception-unet", None, True, 1_865_676, True),  # seed 001 U-Net inception 2 heads
])
def test_parameter_counts_match_the_seeds(arch: str, extra: dict | None, presence: bool,
                                          expected: int, with_statistics: bool) -> None:
    with torch.device("meta"):
        model = build(arch, extra, presence=presence)
    parameters, total = parameters_and_statistics(model)
    assert (total if with_statistics else parameters) == expected


@pytest.mark.parametrize(("arch", "extra"), [
    ("unet-plain", None), ("sharp-unet", None), ("r2unet", None), ("attention-unet", None),
    ("attention-resunet", {"batch_norm": False}), ("inception-unet", None),
])
def test_custom_unets_run_the_one_skeleton_forward(arch: str, extra: dict | None) -> None:
    """The U-Net family overrides hooks, never the forward pass itself."""
    with torch.device("meta"):
        model = build(arch, extra)
    assert isinstance(model.net, UNetSkeleton) and model.size_multiple == SIZE_MULTIPLE
    assert type(model.net).forward is UNetSkeleton.forward


def test_wide_unet_is_the_plain_unet_at_width_35() -> None:
    with torch.device("meta"):
        wide = build("unet-plain", {"width": 35})
    first = wide.net.encoder[0][0][0]
    assert first.out_channels == 35 and wide.net.encoder[-1][0][0].out_channels == 560
    assert count_parameters(wide) == 9_282_246


# --------------------------------------------------------------------------------------------
# sharp skips and activations


def test_sharpen_skip_is_the_input_plus_its_laplacian_and_has_no_state() -> None:
    block = SharpenSkip()
    assert list(block.parameters()) == [] and block.state_dict() == {}
    x = torch.randn(2, 3, 9, 11)
    laplacian = torch.tensor([[-1.0, -1, -1], [-1, 8, -1], [-1, -1, -1]]).expand(3, 1, 3, 3)
    expected = x + F.conv2d(x, laplacian, padding=1, groups=3)
    torch.testing.assert_close(block(x), expected)
    constant = torch.full((1, 2, 6, 6), 0.7)
    torch.testing.assert_close(block(constant)[..., 1:-1, 1:-1], constant[..., 1:-1, 1:-1])


@pytest.mark.parametrize(("plain", "sharp"), [
    (("unet-plain", None), ("sharp-unet", None)),
    (("unet-plain", {"width": 8}), ("unet-plain", {"width": 8, "skip": "sharp"})),
    (("unet", None), ("unet", {"skip": "sharp"})),
    (("unetplusplus", None), ("unetplusplus", {"skip": "sharp"})),
])
def test_sharp_skips_add_no_learnable_parameters(plain: tuple, sharp: tuple) -> None:
    with torch.device("meta"):
        plain_model, sharp_model = build(*plain), build(*sharp)
    assert count_parameters(sharp_model) == count_parameters(plain_model)
    assert sum(1 for m in sharp_model.modules() if isinstance(m, SharpenSkip)) == 1


def test_sharp_skips_change_the_output_of_the_same_weights() -> None:
    torch.manual_seed(0)
    plain, sharp = build("unet-plain", {"width": 4}).eval(), build("sharp-unet", {"width": 4})
    sharp.load_state_dict(plain.state_dict())  # same keys: the sharp block has no state
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(plain(x)[0], sharp.eval()(x)[0])


@pytest.mark.parametrize(("arch", "extra", "decoder"), [
    ("unet", {"activation": "mish"}, lambda m: m.net.decoder),
    ("unet-plain", {"width": 4, "activation": "swish"}, lambda m: m.net.decoder),
    ("inception-unet", {"width": 16, "activation": "relu"}, lambda m: m.net.decoder),
])
def test_activation_replaces_the_decoder_activations_only(
        arch: str, extra: dict, decoder: Callable[[SegmentationNet], nn.Module]) -> None:
    wanted = {"mish": nn.Mish, "swish": nn.SiLU, "relu": nn.ReLU}[extra["activation"]]
    with torch.device("meta"):
        model = build(arch, extra)
    decoder_kinds = {type(m) for m in decoder(model).modules()}
    assert wanted in decoder_kinds
    assert not decoder_kinds & ({nn.ReLU, nn.ELU, nn.SiLU, nn.Mish} - {wanted})
    encoder_kinds = {type(m) for m in model.net.encoder.modules()}
    assert wanted not in encoder_kinds


def test_ragcm_is_unet_with_rpa_and_apf() -> None:
    with torch.device("meta"):
        ragcm = build("ragcm")
        ablation = build("unet", {"context": "rpa", "fusion": "apf"})
        baseline = build("unet")
    assert ragcm.state_dict().keys() == ablation.state_dict().keys()
    assert count_parameters(ragcm) > count_parameters(baseline)


# --------------------------------------------------------------------------------------------
# a decoder per class


def per_class_config(classes: int, multilabel: bool = False, extra: dict | None = None,
                     presence: bool = False) -> ModelConfig:
    return ModelConfig("unet", "resnet18", "none", 1, None, presence,
                       {"decoders": "per-class", **(extra or {})}, classes, multilabel)


def per_class_net(classes: int, multilabel: bool = False, extra: dict | None = None,
                  presence: bool = False) -> SegmentationNet:
    torch.manual_seed(0)
    return build_model(per_class_config(classes, multilabel, extra, presence)).eval()


@pytest.mark.parametrize(("classes", "multilabel", "channels"), [
    (3, False, 3), (4, False, 4), (3, True, 2)])
def test_per_class_decoders_give_each_class_its_own_logit(classes: int, multilabel: bool,
                                                          channels: int) -> None:
    model = per_class_net(classes, multilabel)
    decoders = [model.net.model.decoder, *model.net.class_decoders]
    assert len(decoders) == classes - 1
    assert [type(m).__name__ for m in model.modules()].count("ResNetEncoder") == 1
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        before = model(x)[0]
        for p in decoders[-1].parameters():  # the last class's decoder only
            p.add_(0.5)
        after = model(x)[0]
    assert before.shape == (2, channels, 64, 64)
    torch.testing.assert_close(after[:, :-1], before[:, :-1])  # the other classes keep theirs
    assert not torch.allclose(after[:, -1], before[:, -1])
    if not multilabel:  # softmax: the background logit is the constant 0 the others face
        assert torch.count_nonzero(before[:, 0]) == 0


def test_per_class_decoders_are_half_width_and_cost_less_than_a_shared_one() -> None:
    with torch.device("meta"):
        shared = build_model(ModelConfig("unet", "resnet18", "none", 1, None, False, None, 3))
    per_class = per_class_net(3)
    assert [b.conv2[0].out_channels for b in per_class.net.model.decoder.blocks] == \
        [128, 64, 32, 16, 16]
    assert count_parameters(per_class) < count_parameters(shared)


def test_per_class_decoders_take_the_other_unet_options() -> None:
    torch.manual_seed(0)
    config = per_class_config(3, extra={"skip": "sharp", "context": "rpa",
                                        "activation": "mish"}, presence=True)
    config.decoder_attention = "scse"
    model = build_model(config).eval()
    for decoder in [model.net.model.decoder, *model.net.class_decoders]:
        assert nn.Mish in {type(m) for m in decoder.modules()}
        assert nn.ReLU not in {type(m) for m in decoder.modules()}
    masks, presence = model(torch.randn(2, 1, 32, 32))
    assert masks.shape == (2, 3, 32, 32) and presence.shape == (2, 2)


def test_per_class_decoders_round_trip_through_a_run_folder(tmp_path: Path) -> None:
    model = per_class_net(3)
    write_config(tmp_path, RunConfig(per_class_config(3), Geometry("resize", 64, 64), 0.5,
                                     0.25, {"arch": "unet"}, {}, Classes.parse("3")))
    save_weights(model, tmp_path / BEST)
    saved, loaded = load_run(tmp_path)
    assert saved.model.extra == {"decoders": "per-class"}
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x)[0], model(x)[0])


# --------------------------------------------------------------------------------------------
# the command line


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_with_folds(tmp_path_factory.mktemp("models_data"), subjects=2, per_subject=6,
                            test=3, size=(64, 48), seed=5)


@pytest.mark.parametrize("options", [
    ["--arch", "sharp-unet", "--width", "4", "--activation", "mish"],
    ["--arch", "attention-resunet", "--width", "4", "--presence-head", "--no-batch-norm"],
])
def test_cli_trains_and_predicts_custom_architectures(manifest: Path, tmp_path: Path,
                                                      options: list[str]) -> None:
    run, probs = tmp_path / "run", tmp_path / "probs"
    result = run_cli("train", manifest, "--out", run, *TINY, *options)
    assert result.exit_code == 0, (result.stderr, result.exception)
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["arch"] == options[1] and config["model"]["encoder"] == "none"
    assert config["model"]["extra"]["width"] == 4
    test_images = manifest.parent / "data" / "test"
    result = run_cli("predict", run, test_images, "--out", probs, "--device", "cpu",
                     "--tta", "hflip", "--workers", "1")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert len(list(probs.glob("*.png"))) == 3
    assert (probs / "presence.csv").is_file() == ("--presence-head" in options)


@pytest.mark.parametrize(("options", "fragments"), [
    (["--arch", "deeplabv3plus", "--skip", "sharp"], ["--skip sharp", "deeplabv3plus"]),
    (["--arch", "sharp-unet", "--skip", "plain"], ["--skip plain", "sharp-unet", "unet-plain"]),
    (["--arch", "unet-plain", "--encoder", "resnet34"], ["--encoder resnet34", "unet-plain"]),
    (["--arch", "unet-plain", "--encoder-weights", "imagenet"],
     ["--encoder-weights imagenet", "unet-plain"]),
    (["--arch", "fcn8s", "--context", "rpa"], ["--context rpa", "fcn8s"]),
    (["--arch", "inception-unet", "--no-batch-norm"], ["--no-batch-norm", "inception-unet"]),
    (["--arch", "inception-unet", "--width", "20"], ["--width 20", "multiple of 16"]),
    (["--arch", "unet", "--activation", "tanh"], ["--activation", "mish"]),
    (["--arch", "ragcm", "--fusion", "none"], ["--fusion none", "ragcm"]),
    (["--arch", "deeplabv3plus", "--decoders", "per-class"], ["--decoders per-class", "unet"]),
    (["--arch", "unet", "--decoders", "per-class"], ["--decoders per-class", "--classes"]),
    (["--arch", "unet", "--decoders", "each"], ["--decoders 'each'", "per-class"]),
])
def test_options_an_architecture_cannot_take_are_one_line_errors(
        manifest: Path, tmp_path: Path, options: list[str], fragments: list[str]) -> None:
    result = run_cli("train", manifest, "--out", tmp_path / "run", *TINY, *options)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "run").exists()
