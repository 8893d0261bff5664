"""Command-line configuration shared by train_stage1.py, train_stage2.py and test.py.

The release's flags keep their names, short forms and defaults (SPEC §5); the additions are
--dataset SYNTH / a .yaml path, --dataset-path, --device, --amp, --pretrained,
--resume-training, --save-every, --eval-every, --grad-checkpointing, --output-dir and --no-progress.

Defaults can come from the dataset YAML: its `defaults` mapping, e.g.

    defaults:
      stage1: {batch_size: 16, learning_rate: 0.001}
      stage2: {learning_rate: 0.0001}
      test: {batch_size: 32}

sets parser defaults (keys are argparse destinations); anything on the command line wins.
Configs are found relative to this repository (dataset.load_dataset_config), never the cwd.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent
ARCS = ["resnet18", "resnet50", "resnet101", "swin_transformer_tiny", "swin_transformer_small",
        "swin_transformer_base"]


def fold_arg(value: str):
    """An int fold number, or 'all' (test.py only)."""
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"fold must be an integer or 'all', got {value!r}") from None


def get_conf_parser() -> argparse.ArgumentParser:
    """The parent parser (add_help=False) holding every shared flag."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("release flags (names, short forms and defaults as in the release)")
    g.add_argument("--dataset", default="BP4D", type=str,
                   help="BP4D, DISFA, SYNTH (generated on first use) or a path to a dataset .yaml")
    g.add_argument("-f", "--fold", default=1, type=fold_arg, metavar="K", help="fold 1..N-fold")
    g.add_argument("--N-fold", default=3, type=int, dest="N_fold")
    g.add_argument("-b", "--batch-size", default=64, type=int, dest="batch_size")
    g.add_argument("-lr", "--learning-rate", default=1e-4, type=float, dest="learning_rate")
    g.add_argument("-e", "--epochs", default=20, type=int)
    g.add_argument("-j", "--num_workers", default=4, type=int, dest="num_workers")
    g.add_argument("-wd", "--weight-decay", default=5e-4, type=float, dest="weight_decay")
    g.add_argument("--optimizer-eps", default=1e-8, type=float, dest="optimizer_eps")
    g.add_argument("--crop-size", default=224, type=int, dest="crop_size")
    g.add_argument("--evaluate", action="store_true", help="only evaluate --resume on the test fold")
    g.add_argument("--arc", default="swin_transformer_base", choices=ARCS)
    g.add_argument("--metric", default="dots", choices=["dots", "cosine", "l1"],
                   help="similarity of the stage-1 facial graph")
    g.add_argument("--lam", default=0.001, type=float, help="weight of the stage-2 edge loss")
    g.add_argument("--gpu_ids", default="0", type=str,
                   help="sets CUDA_VISIBLE_DEVICES when it is not set already (single process); "
                        "use torchrun for several GPUs")
    g.add_argument("--seed", default=0, type=int)
    g.add_argument("--exp-name", default="Test", type=str, dest="exp_name")
    g.add_argument("--resume", default="", type=str,
                   help="checkpoint to start from (stage 2: the stage-1 checkpoint; test: the model)")

    g = p.add_argument_group("additions")
    g.add_argument("--dataset-path", default=None, type=str, dest="dataset_path",
                   help="folder with list/ and img/ (default: the dataset config's dataset_path)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"],
                   help="mixed precision on CUDA (fp16 uses a GradScaler)")
    g.add_argument("--pretrained", default=None, type=str,
                   help="ImageNet weights for the backbone (default: the release's file in "
                        "checkpoints/ if present; 'none': a random backbone without a warning)")
    g.add_argument("--resume-training", default=None, type=str, dest="resume_training",
                   help="continue an interrupted run from its last.pth (model, optimizer, "
                        "scaler, epoch, step, RNG)")
    g.add_argument("--save-every", default=1, type=int, dest="save_every",
                   help="write epoch{E}_model_fold{k}.pth every this many epochs (0: never)")
    g.add_argument("--eval-every", default=1, type=int, dest="eval_every",
                   help="evaluate on the test fold every this many epochs (and after the last)")
    g.add_argument("--grad-checkpointing", default=0, type=int, choices=range(5), dest="grad_checkpointing",
                   metavar="STAGES",
                   help="training: recompute the first STAGES backbone stages (0-4) in the backward "
                        "pass instead of storing their activations; less memory, more time per step, "
                        "same results (default 0: off)")
    g.add_argument("--output-dir", default="results", type=str, dest="output_dir")
    g.add_argument("--no-progress", action="store_true", dest="no_progress", help="no tqdm bars")
    # testing aids, hidden from --help: stop as if killed after this epoch; inject a NaN loss
    g.add_argument("--stop-after-epoch", default=None, type=int, dest="stop_after_epoch",
                   help=argparse.SUPPRESS)
    g.add_argument("--inject-nan-step", default=None, type=int, dest="inject_nan_step",
                   help=argparse.SUPPRESS)
    return p


def apply_dataset_defaults(parser: argparse.ArgumentParser, cfg: dict, section: str | None) -> None:
    """Set parser defaults from the dataset config's `defaults[section]` (e.g. 'stage1')."""
    defaults = cfg.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ValueError(f"dataset config {cfg.get('_path', cfg.get('name'))}: 'defaults' must be a mapping")
    values = (defaults.get(section) or {}) if section else {}
    known = {a.dest for a in parser._actions}
    bad = [k for k in values if k.replace("-", "_") not in known]
    if bad:
        raise ValueError(f"dataset config {cfg.get('_path', cfg.get('name'))}: unknown keys under "
                         f"defaults.{section}: {bad} (use argparse names such as learning_rate)")
    parser.set_defaults(**{k.replace("-", "_"): v for k, v in values.items()})


def parse_args(parser: argparse.ArgumentParser, argv=None, section: str | None = None):
    """Parse twice: first to find --dataset, then with that dataset's defaults applied.

    Adds args.dataset_config (the loaded dict), args.num_classes, args.neighbor_num and resolves
    args.dataset_path (like the release's set_env) against the repository root when relative.
    """
    from dataset import load_dataset_config

    first, _ = parser.parse_known_args(argv)
    cfg = load_dataset_config(first.dataset)
    apply_dataset_defaults(parser, cfg, section)
    args = parser.parse_args(argv)
    args.dataset_config = cfg
    args.dataset_name = cfg["name"]
    args.num_classes = int(cfg["num_classes"])
    args.neighbor_num = int(cfg["neighbor_num"])
    if args.dataset_path is None:
        args.dataset_path = str(cfg["dataset_path"])
    if isinstance(args.fold, int) and not 1 <= args.fold <= args.N_fold:
        parser.error(f"--fold must be in 1..{args.N_fold}, got {args.fold}")
    if args.gpu_ids and "CUDA_VISIBLE_DEVICES" not in os.environ and "RANK" not in os.environ:
        # the release's --gpu_ids; a single process uses the first listed device
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu_ids
    return args


def run_dir(args) -> Path:
    """results/{exp-name}/bs_{b}_seed_{s}_lr_{lr}/ as in the release."""
    return Path(args.output_dir) / args.exp_name / f"bs_{args.batch_size}_seed_{args.seed}_lr_{args.learning_rate}"


def serialisable_args(args) -> dict:
    """The resolved arguments as plain YAML/JSON-friendly values (for args.yaml and checkpoints)."""
    out = {}
    for k, v in vars(args).items():
        if k in ("dataset_config",):
            continue
        if isinstance(v, Path):
            v = str(v)
        if v is None or isinstance(v, (bool, int, float, str)):
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (bool, int, float, str)) for x in v):
            out[k] = list(v)
        else:
            out[k] = str(v)
    return out


def write_args(args, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "args.yaml"
    with open(path, "w") as fh:
        yaml.safe_dump(serialisable_args(args), fh, sort_keys=True)
    return path
