"""ONNX Runtime against torch on the CPU (issue 13): U-Net/ResNet-34 at 576x448 and RAGCM at its
recipe's 512x512, then frames per second of every shipped recipe at its own size.

Every model is a random-init run folder built in a temporary directory (config.json and
model.safetensors as `train` writes them, no training: only the graph matters for speed). Each
is timed with `nerveseg_cli.inference.bench.bench` (`nerveseg bench`: the whole per-frame path of
`predict` on decoded synthetic 580x420 frames, geometry and post-processing included; latency at
batch 1 and throughput at the best batch size), and the maps of both engines are compared on
the same frames, in grey levels (the 8-bit PNG values predict writes). Both engines get the
same CPU threads (`os.sched_getaffinity`, or OMP_NUM_THREADS when set). Target: ONNX Runtime
>= 1.3x torch.

Run: nice .venv/bin/python benchmarks/bench_onnx.py [--frames 20] [--recipe-frames 8]
     [--recipes nerve-default,seed002-ragcm] [--skip-recipes]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from nerveseg_cli.classes import Classes  # noqa: E402
from nerveseg_cli.geometry import Geometry  # noqa: E402
from nerveseg_cli.inference.bench import BenchOptions, BenchResult, bench  # noqa: E402
from nerveseg_cli.inference.engines import load_engines  # noqa: E402
from nerveseg_cli.inference.export import export_run  # noqa: E402
from nerveseg_cli.inference.ort import ort_threads  # noqa: E402
from nerveseg_cli.io.probmaps import probability_to_values  # noqa: E402
from nerveseg_cli.io.runs import BEST, RunConfig, save_weights, write_config  # noqa: E402
from nerveseg_cli.models import ModelConfig, build_model, count_parameters  # noqa: E402
from nerveseg_cli.train.options import TrainOptions  # noqa: E402
from nerveseg_cli.train.recipes import load_recipe, recipe_names  # noqa: E402

KAGGLE = (580, 420)  # (width, height) of the frames
Row = tuple[str, str, str, str]


@dataclasses.dataclass
class Measured:
    name: str
    size: str
    parameters: int
    result: BenchResult
    grey_levels: int  # largest difference of the two engines' 8-bit maps

    def engine(self, name: str):  # noqa: ANN201  EngineFigures
        return next(e for e in self.result.engines if e.engine == name)


def make_run(folder: Path, model: ModelConfig, geometry: Geometry) -> int:
    """A random-init run folder (a multi-class one with the class names, as train writes
    them); returns the parameter count."""
    import torch

    torch.manual_seed(0)
    net = build_model(model)
    folder.mkdir(parents=True)
    classes = Classes.parse(str(model.classes)) if model.classes > 2 else None
    write_config(folder, RunConfig(model, geometry, 0.39, 0.22, {"note": "bench_onnx.py"},
                                   {}, classes))
    save_weights(net, folder / BEST)
    return count_parameters(net)


def recipe_model(name: str) -> tuple[ModelConfig, Geometry]:
    """A recipe's network (no pretrained weights: nothing is downloaded) and geometry: its
    --size resized, else the Kaggle frame padded to the architecture's multiple."""
    recipe = load_recipe(name)
    fields = {f.name for f in dataclasses.fields(TrainOptions)}
    train = {k: v for k, v in recipe.train.items() if k in fields}
    train["encoder_weights"] = "none"
    if recipe.task == "multiclass":
        train["classes"] = "background,nerve,vessel"
    model = TrainOptions(manifest="-", **train).model_config()
    if train.get("size"):
        width, height = (int(v) for v in train["size"].split("x"))
        return model, Geometry("resize", width, height)
    import torch

    with torch.device("meta"):
        multiple = build_model(model).size_multiple
    return model, Geometry("pad", -(-KAGGLE[0] // multiple) * multiple,
                           -(-KAGGLE[1] // multiple) * multiple)


def grey_level_difference(run: Path, exported: Path, frames: int = 4) -> int:
    """The largest difference of torch's and ONNX Runtime's 8-bit maps of a few frames."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, KAGGLE[::-1], np.uint8) for _ in range(frames)]
    maps = []
    for engine, model in (("torch", run), ("onnxruntime", exported)):
        (loaded,) = load_engines([model], engine, "cpu")
        stacks, _ = loaded.run_batch(images, [(False, False)])
        maps.append([probability_to_values(np.clip(s, 0, 1)).astype(int) for s in stacks])
    return max(int(np.abs(a - b).max()) for a, b in zip(*maps, strict=True))


def measure(root: Path, name: str, model: ModelConfig, geometry: Geometry,
            options: BenchOptions) -> Measured:
    """Export once (``nerveseg export``, checked), then time torch on the run folder and ONNX
    Runtime on the export."""
    run, exported = root / name, root / f"{name}.onnx"
    parameters = make_run(run, model, geometry)
    started = time.perf_counter()
    export_run(run, exported)
    result = bench(run, None, dataclasses.replace(options, engine="torch"))
    result.engines += bench(exported, None,
                            dataclasses.replace(options, engine="onnxruntime")).engines
    measured = Measured(name, f"{geometry.width}x{geometry.height}", parameters, result,
                        grey_level_difference(run, exported))
    print(f"  {name} ({geometry.mode} {measured.size}): {time.perf_counter() - started:.0f} s",
          file=sys.stderr, flush=True)
    return measured


def headline_rows(m: Measured) -> list[Row]:
    torch_figures, ort = m.engine("torch"), m.engine("onnxruntime")
    ratio = ort.best_fps / torch_figures.best_fps
    return [
        (f"{m.name} {m.size}: throughput at best batch, ORT (torch)",
         f"{ort.best_fps:.2f} fps (batch {ort.best_batch})",
         f"{torch_figures.best_fps:.2f} fps (batch {torch_figures.best_batch})",
         f"{ratio:.2f}x (target >= 1.3x)"),
        (f"{m.name} {m.size}: latency p50 at batch 1, ORT (torch)",
         f"{ort.latency_ms['p50']:.0f} ms (p99 {ort.latency_ms['p99']:.0f})",
         f"{torch_figures.latency_ms['p50']:.0f} ms (p99 "
         f"{torch_figures.latency_ms['p99']:.0f})",
         f"{torch_figures.latency_ms['p50'] / ort.latency_ms['p50']:.2f}x faster"),
        (f"{m.name} {m.size}: maps, ORT vs torch", f"{m.grey_levels} grey levels max",
         "-", "<= 1 (equal maps)"),
    ]


def print_recipe_header() -> None:
    print("\n| recipe | size | params | CPU fps torch | CPU fps ONNX Runtime | ORT / torch |")
    print("|---|---|---|---|---|---|", flush=True)


def print_recipe_row(m: Measured) -> None:
    """One row as soon as it is measured (a long run shows what it has so far)."""
    torch_figures, ort = m.engine("torch"), m.engine("onnxruntime")
    print(f"| {m.name} | {m.size} | {m.parameters / 1e6:.1f} M | "
          f"{torch_figures.best_fps:.1f} | {ort.best_fps:.1f} | "
          f"{ort.best_fps / torch_figures.best_fps:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20, help="frames per timing, headline")
    parser.add_argument("--recipe-frames", type=int, default=8,
                        help="frames per timing, recipe table")
    parser.add_argument("--recipes", default=",".join(recipe_names()),
                        help="recipes for the table, comma-separated")
    parser.add_argument("--skip-recipes", action="store_true")
    args = parser.parse_args()
    import torch

    print(f"CPU: {ort_threads()} threads for both engines (torch {torch.get_num_threads()}); "
          f"torch {torch.__version__}", file=sys.stderr)
    headline = BenchOptions(device="cpu", batch_sizes=(1, 2, 4),
                            frames=args.frames)
    quick = dataclasses.replace(headline, batch_sizes=(1, 4), frames=args.recipe_frames)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        unet = measure(root, "unet-resnet34", ModelConfig("unet", "resnet34"),
                       Geometry("resize", 576, 448), headline)
        ragcm_model, ragcm_geometry = recipe_model("seed002-ragcm")
        ragcm = measure(root, "ragcm-resnet34", ragcm_model, ragcm_geometry, headline)
        result = unet.result
        print(f"\nCPU, {result.cores} cores (load {result.load_average} at the start), "
              f"{unet.engine('onnxruntime').threads} threads each; frames: "
              f"{result.frames_from}; torch {torch.__version__}")
        report(headline_rows(unet) + headline_rows(ragcm))
        sys.stdout.flush()
        if not args.skip_recipes:
            print_recipe_header()
            for name in args.recipes.split(","):
                if name == "seed002-ragcm":  # the headline's RAGCM: the same model and size
                    print_recipe_row(dataclasses.replace(ragcm, name=name))
                    continue
                print_recipe_row(measure(root, name, *recipe_model(name), quick))


if __name__ == "__main__":
    main()
