"""Wrote this folder with nerveseg 0.1.0 (commit ed5a270); kept to show how, never to re-run
with a newer version (README.md)."""

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from nerveseg_cli.predict import predict
from nerveseg_cli.runs import load_run
from nerveseg_cli.split import split, write_split
from nerveseg_cli.synth import synth
from nerveseg_cli.train import TrainOptions, train

torch.set_num_threads(1)
root = Path("/tmp/legacy/work")
shutil.rmtree(root, ignore_errors=True)
synth(root / "data", subjects=2, per_subject=8, test=3, size=(40, 28), seed=3)
write_split(split(root / "data" / "train", folds=2, seed=0), root / "folds.csv")
out = Path("/tmp/legacy/legacy")
shutil.rmtree(out, ignore_errors=True)
out.mkdir()
shutil.copytree(root / "data" / "test", out / "images")
runs = {
    "unet-plain-sharp": dict(arch="unet-plain", skip="sharp", width=2, presence_head=True,
                             batch_norm=True),
    "sharp-unet": dict(arch="sharp-unet", width=2, activation="elu"),
    "r2unet": dict(arch="r2unet", width=2, batch_norm=True),
    "attention-unet": dict(arch="attention-unet", width=2),
    "attention-resunet": dict(arch="attention-resunet", width=2, presence_head=True),
    "inception-unet": dict(arch="inception-unet", width=16, presence_head=True),
    "fcn8s": dict(arch="fcn8s", width=1),
}
for name, opts in runs.items():
    run = root / "runs" / name
    size = "64x32" if name == "fcn8s" else "32x32"
    train(TrainOptions(manifest=str(root / "folds.csv"), fold="0", epochs=8, batch_size=4,
                       lr=0.02, warmup_epochs=0.0, size=size, workers=1, device="cpu",
                       **opts), run)
    dest = out / "runs" / name
    dest.mkdir(parents=True)
    for file in ("config.json", "model.safetensors"):
        shutil.copy(run / file, dest / file)
    predict([dest], out / "images", out / "maps" / name, tta="flips", device="cpu", workers=1)
    config, model = load_run(dest)
    x = torch.randn(2, 1, config.geometry.height, config.geometry.width,
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, presence = model(x)
    tensors = {"input": x, "logits": logits.contiguous()}
    if presence is not None:
        tensors["presence"] = presence.contiguous()
    save_file(tensors, str(dest / "expected_outputs.safetensors"))
