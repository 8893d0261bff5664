"""Command-line configuration shared by train_stage1.py, train_stage2.py and test.py.

The release's flags keep their names, short forms and defaults; the additions are
--dataset SYNTH / a .yaml path, --dataset-path, --device, --amp, --pretrained,
--resume-training, --save-every, --eval-every, --log-every, --grad-checkpointing, --output-dir,
--overwrite, --no-progress, --protocol, --optimizer / --sam-rho / --sam-adaptive and --init.

Every bad value is one line and exit code 2 (argparse's usage block is left out; `--help` has it):
argparse's own checks, the ranges in RANGE_CHECKS, and the dataset name (matched case-insensitively,
with a "did you mean" for a typo).

Two parent parsers: `get_common_parser()` (data, model, device, outputs: what testing uses)
and `get_training_parser()` (optimisation, checkpoints). test.py accepts the training flags of
the release's commands too, but hides them from its --help.

Defaults can come from the dataset YAML: its `defaults` mapping, e.g.

    defaults:
      stage1: {batch_size: 16, learning_rate: 0.001}
      stage2: {learning_rate: 0.0001}
      test: {batch_size: 32}

sets parser defaults (keys are argparse destinations); anything on the command line wins, and
--help shows the resolved defaults of the dataset named on the command line.
Configs are found relative to this repository (dataset.load_dataset_config), never the cwd.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import yaml

from megraphau.errors import ConfigError

#: --arc choices: megraphau.model.ARCHS's names (listed here so that --help needs no torch)
ARCS = ["resnet18", "resnet50", "resnet101", "swin_transformer_tiny", "swin_transformer_small",
        "swin_transformer_base", "mae_vit_base"]
#: The dataset of a run that names none and whose --resume file does not say (the release's default).
DEFAULT_DATASET = "BP4D"


def fold_arg(value: str):
    """An int fold number, or 'all' (test.py only)."""
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"fold must be an integer or 'all', got {value!r}") from None


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each flag's (resolved) default, unless the help text already says what the default
    is or there is none, and keeps the description's and epilog's line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, "", argparse.SUPPRESS) or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


def get_common_parser() -> argparse.ArgumentParser:
    """Flags of every script (data, model, device, outputs), add_help=False for `parents=`."""
    from megraphau import provenance

    p = argparse.ArgumentParser(add_help=False)
    provenance.add_version_flag(p)
    g = p.add_argument_group("data and model (the release's flags)")
    g.add_argument("--dataset", default=None, type=str,
                   help=f"BP4D, DISFA, SYNTH (generated on first use), OpenGraphAU or a path to a dataset "
                        f".yaml; default: the dataset a --resume checkpoint names, else {DEFAULT_DATASET}")
    g.add_argument("-f", "--fold", default=1, type=fold_arg, metavar="K",
                   help="fold 1..N-fold: trains on the other folds' subjects, tests on this fold's")
    g.add_argument("--N-fold", default=3, type=int, dest="N_fold", help="number of folds of the protocol")
    g.add_argument("-b", "--batch-size", default=64, type=int, dest="batch_size",
                   help="images per batch (per process under torchrun)")
    g.add_argument("-j", "--num_workers", default=4, type=int, dest="num_workers",
                   help="data-loading worker processes (0: load in the main process)")
    g.add_argument("--crop-size", default=224, type=int, dest="crop_size",
                   help="side of the square crop fed to the model (images are resized to crop*8/7 first)")
    g.add_argument("--arc", default="swin_transformer_base", choices=ARCS, help="backbone")
    g.add_argument("--metric", default="dots", choices=["dots", "cosine", "l1"],
                   help="similarity of the stage-1 facial graph (kNN over AU features)")
    g.add_argument("--gpu_ids", default="0", type=str,
                   help="sets CUDA_VISIBLE_DEVICES when it is not set already (single process); "
                        "use torchrun for several GPUs")
    g.add_argument("--seed", default=0, type=int, help="seed of every random number generator")
    g.add_argument("--exp-name", default="Test", type=str, dest="exp_name",
                   help="run folder: OUTPUT_DIR/EXP_NAME/bs_{b}_seed_{s}_lr_{lr}/")
    g.add_argument("--resume", default="", type=str, metavar="CKPT",
                   help="checkpoint to start from (stage 2: the stage-1 checkpoint; test: the model)")

    g = p.add_argument_group("running")
    g.add_argument("--dataset-path", default=None, type=str, dest="dataset_path",
                   help="folder with list/ and img/ (default: the dataset config's dataset_path)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: CUDA when available, else the CPU")
    g.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"],
                   help="mixed precision on CUDA (fp16 uses a GradScaler)")
    g.add_argument("--output-dir", default="results", type=str, dest="output_dir",
                   help="where run folders go")
    g.add_argument("--no-progress", action="store_true", dest="no_progress", help="no tqdm progress bars")
    g.add_argument("--protocol", default=None, choices=["folds", "hybrid"],
                   help="the data set's split: 'folds' (DATA/list/{D}_*_fold{k}.txt, --fold) or 'hybrid' "
                        "(OpenGraphAU's train / val / test lists, no folds); default: the dataset config's")
    g.add_argument("--overwrite", action="store_true",
                   help="let a new run replace the outputs of an earlier run in its run folder (without it, "
                        "such a folder is refused; see docs/reliability.md)")
    return p


def get_training_parser(hidden: bool = False) -> argparse.ArgumentParser:
    """Training-only flags, add_help=False for `parents=`. hidden: accepted but left out of
    --help (test.py takes them so that the release's commands still run)."""
    def text(s: str) -> str:
        return argparse.SUPPRESS if hidden else s

    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("training (the release's flags)") if not hidden else p
    g.add_argument("-lr", "--learning-rate", default=1e-4, type=float, dest="learning_rate",
                   help=text("peak learning rate of the cosine schedule (AdamW)"))
    g.add_argument("-e", "--epochs", default=20, type=int, help=text("epochs to train"))
    g.add_argument("-wd", "--weight-decay", default=5e-4, type=float, dest="weight_decay",
                   help=text("AdamW weight decay"))
    g.add_argument("--optimizer-eps", default=1e-8, type=float, dest="optimizer_eps", help=text("AdamW eps"))
    g.add_argument("--evaluate", action="store_true",
                   help=text("only evaluate --resume on the test fold (as test.py does), no training"))
    g.add_argument("--lam", default=0.001, type=float, help=text("weight of the stage-2 edge loss"))

    g = p.add_argument_group("training additions") if not hidden else p
    g.add_argument("--pretrained", default=None, type=str,
                   help=text("ImageNet weights for the backbone (default: the release's file in "
                             "checkpoints/ if present; 'none': a random backbone without a warning)"))
    g.add_argument("--resume-training", default=None, type=str, dest="resume_training",
                   help=text("continue an interrupted run from its last.pth (model, optimizer, "
                             "scaler, epoch, step, RNG)"))
    g.add_argument("--save-every", default=0, type=int, dest="save_every",
                   help=text("also keep the model of every this many epochs as epoch{E}_model_fold{k}.pth "
                             "(0: only last.pth and best.pth)"))
    g.add_argument("--eval-every", default=1, type=int, dest="eval_every",
                   help=text("evaluate on the test fold every this many epochs (and after the last)"))
    g.add_argument("--log-every", default=50, type=int, dest="log_every",
                   help=text("a progress line in train.log every this many steps (images/s, ETA, "
                             "peak memory; 0: never)"))
    g.add_argument("--grad-checkpointing", default=0, type=int, choices=range(5), dest="grad_checkpointing",
                   metavar="STAGES",
                   help=text("recompute the first STAGES backbone stages (0-4) in the backward pass "
                             "instead of storing their activations: less memory, more time per "
                             "step, same results (0: off)"))
    # OpenGraphAU's recipe (engine/sam.py, docs/opengraphau.md) and fine-tuning from a model
    g = p.add_argument_group("optimizer and initialisation") if not hidden else p
    g.add_argument("--optimizer", default="adamw", choices=["adamw", "sam"],
                   help=text("adamw: the paper's AdamW; sam: SAM around that AdamW (two forward/backward "
                             "passes per step; OpenGraphAU's recipe)"))
    g.add_argument("--sam-rho", default=2.0, type=float, dest="sam_rho",
                   help=text("SAM's neighbourhood radius rho (2.0 with --sam-adaptive, as OpenGraphAU; "
                             "plain SAM usually 0.05)"))
    g.add_argument("--sam-adaptive", default=True, action=argparse.BooleanOptionalAction, dest="sam_adaptive",
                   help=text("ASAM: measure the SAM neighbourhood relative to each weight's size (default: on)"))
    g.add_argument("--init", default=None, type=str, metavar="CKPT",
                   help=text("fine-tune from a released or trained model (ME-GraphAU or OpenGraphAU): the same "
                             "AU count loads every shared key; another AU count loads the backbone and "
                             "global_linear and starts the AU head fresh (the keys are logged)"))
    return p


def get_conf_parser() -> argparse.ArgumentParser:
    """Every shared flag (common + training), for the training scripts."""
    return argparse.ArgumentParser(add_help=False, parents=[get_common_parser(), get_training_parser()])


def config_name(cfg: dict) -> str:
    """The file a dataset config came from (its name when it did not come from a file)."""
    return str(cfg.get("config_path") or cfg.get("name"))


def apply_dataset_defaults(parser: argparse.ArgumentParser, cfg: dict, section: str | None) -> dict:
    """Set parser defaults from the dataset config's `defaults[section]` (e.g. 'stage1'); returns
    them ({dest: value}). A value of the wrong type or outside a flag's choices is an error naming
    the YAML file and key (argparse would blame the flag, which the user never passed)."""
    defaults = cfg.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"dataset config {config_name(cfg)}: 'defaults' must be a mapping")
    values = (defaults.get(section) or {}) if section else {}
    if not isinstance(values, dict):
        raise ConfigError(f"default from {config_name(cfg)}: defaults.{section} must be a mapping of flag names")
    actions = {a.dest: a for a in parser._actions}
    bad = [k for k in values if str(k).replace("-", "_") not in actions]
    if bad:
        raise ConfigError(f"dataset config {config_name(cfg)}: unknown keys under defaults.{section}: {bad} "
                          f"(use argparse names such as learning_rate)")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    for dest, value in values.items():
        action = actions[dest]
        where = f"default from {config_name(cfg)}: defaults.{section}.{dest}"
        if action.type in (int, float) and value is not None:
            ok = isinstance(value, action.type) or (action.type is float and isinstance(value, int))
            if isinstance(value, bool) or not ok:
                kind = "an integer" if action.type is int else "a number"
                raise ConfigError(f"{where} must be {kind}, got {value!r}")
        if action.choices is not None and value is not None and value not in action.choices:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    parser.set_defaults(**values)
    return values


def given_on_command_line(parser: argparse.ArgumentParser, argv: list[str], dests) -> set[str]:
    """Which of `dests` the command line sets (the rest keep their defaults): argparse leaves an
    attribute already on the namespace alone unless an option sets it."""
    unset = object()
    probe = argparse.Namespace(**{dest: unset for dest in dests})
    parser.parse_known_args(argv, namespace=probe)
    return {dest for dest in dests if getattr(probe, dest) is not unset}


def dataset_of_checkpoint(pattern: str) -> str | None:
    """The dataset a --resume checkpoint says it was trained on (None for the release's files,
    which do not say, or when the file cannot be read: loading reports that later)."""
    if not pattern:
        return None
    path = Path(pattern.replace("{fold}", "1"))
    if not path.is_file():
        return None
    from megraphau.model import checkpoint_facts
    from megraphau.model.checkpoint import load_weights_only

    try:  # memory-mapped: the facts without reading the weights (loading the model reads them once)
        obj = load_weights_only(path, mmap=True)
    except (ValueError, OSError, RuntimeError):
        return None
    if not isinstance(obj, dict):
        return None
    facts = checkpoint_facts(obj)
    return facts.get("dataset_config") or facts.get("dataset")


def _finite(v) -> bool:
    return math.isfinite(v)


#: Upper bounds of the sizes: far beyond any real run, well below what would only fail later with
#: an allocation of many GB (--crop-size 100000 asks for 39 GB per image) or a hang.
MAX_CROP_SIZE = 1024
MAX_BATCH_SIZE = 4096
MAX_EPOCHS = 10000
MAX_WORKERS = 256
MAX_FOLDS = 100


#: (dest, flag, test, what the value must be): ranges argparse's types do not check.
RANGE_CHECKS = (
    ("batch_size", "-b/--batch-size", lambda v: v >= 1, "at least 1"),
    ("batch_size", "-b/--batch-size", lambda v: v <= MAX_BATCH_SIZE, f"at most {MAX_BATCH_SIZE}"),
    ("num_workers", "-j/--num_workers", lambda v: v >= 0, "0 or more"),
    ("num_workers", "-j/--num_workers", lambda v: v <= MAX_WORKERS, f"at most {MAX_WORKERS}"),
    ("crop_size", "--crop-size", lambda v: v >= 1, "a positive number of pixels"),
    ("crop_size", "--crop-size", lambda v: v <= MAX_CROP_SIZE,
     f"at most {MAX_CROP_SIZE} pixels (images are resized to crop*8/7 first; the release trains at 224)"),
    ("N_fold", "--N-fold", lambda v: v >= 1, "at least 1"),
    ("N_fold", "--N-fold", lambda v: v <= MAX_FOLDS, f"at most {MAX_FOLDS}"),
    ("learning_rate", "-lr/--learning-rate", lambda v: _finite(v) and v > 0, "a finite number above 0"),
    ("epochs", "-e/--epochs", lambda v: v >= 1, "at least 1"),
    ("epochs", "-e/--epochs", lambda v: v <= MAX_EPOCHS, f"at most {MAX_EPOCHS}"),
    ("weight_decay", "-wd/--weight-decay", lambda v: _finite(v) and v >= 0, "a finite number, 0 or more"),
    ("optimizer_eps", "--optimizer-eps", lambda v: _finite(v) and v > 0, "a finite number above 0"),
    ("lam", "--lam", lambda v: _finite(v) and v >= 0, "a finite number, 0 or more"),
    ("save_every", "--save-every", lambda v: v >= 0, "0 or more"),
    ("eval_every", "--eval-every", lambda v: v >= 0, "0 or more"),
    ("log_every", "--log-every", lambda v: v >= 0, "0 or more"),
    ("sam_rho", "--sam-rho", lambda v: _finite(v) and v > 0, "a finite number above 0"),
    ("threshold", "--threshold", lambda v: _finite(v) and 0 < v < 1, "between 0 and 1 (both excluded)"),
)


def check_ranges(parser: argparse.ArgumentParser, args, checks=RANGE_CHECKS, from_yaml: dict | None = None) -> None:
    """parser.error (one line, exit 2) for the first value outside its range: `checks` holds
    (dest, flag, ok, what) rows (RANGE_CHECKS for the training and test scripts; demo.py has its
    own); a value of None (not given, no default) is not checked. from_yaml: {dest: YAML file}
    of the values that came from a dataset YAML's defaults, not the command line: their error
    names the file and key instead of the flag."""
    for dest, flag, ok, what in checks:
        value = getattr(args, dest, None)
        if value is not None and not ok(value):
            if from_yaml and dest in from_yaml:
                raise ConfigError(f"default from {from_yaml[dest]}: {dest} (for {flag}) must be {what}, got {value}")
            parser.error(f"{flag} must be {what}, got {value}")
    if isinstance(getattr(args, "fold", None), int) and not 1 <= args.fold <= args.N_fold:
        parser.error(f"--fold must be in 1..{args.N_fold}, got {args.fold}")


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make parser.error print one line (argparse prints the whole usage block, 20+ lines for
    these parsers, above the error) and exit with code 2."""
    def error(message: str):
        # under torchrun every rank parses the same command line: rank 0 alone says what is wrong
        rank0 = os.environ.get("RANK", "0") in ("", "0")
        parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n" if rank0 else None)

    parser.error = error
    return parser


def parse_args(parser: argparse.ArgumentParser, argv=None, section: str | None = None):
    """Parse twice: first to find the dataset, then with that dataset's defaults applied.

    The dataset is --dataset, else the one a --resume checkpoint names, else BP4D. Adds
    args.dataset_config (the loaded dict), args.dataset_name, args.num_classes,
    args.neighbor_num and resolves args.dataset_path (like the release's set_env) against the
    repository root when relative.
    """
    from megraphau.data.dataset import CONFIG_DIR, load_dataset_config

    one_line_errors(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    first, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    dataset = first.dataset or dataset_of_checkpoint(getattr(first, "resume", "")) or DEFAULT_DATASET
    cfg = load_dataset_config(dataset)
    yaml_defaults = apply_dataset_defaults(parser, cfg, section)
    parser.set_defaults(dataset=dataset)
    args = parser.parse_args(argv)
    given = given_on_command_line(parser, argv, list(yaml_defaults))
    from_yaml = {dest: config_name(cfg) for dest in yaml_defaults if dest not in given}
    args.dataset_given = first.dataset is not None  # --dataset on the command line (SYNTH: may generate)
    args.dataset_config = cfg
    if Path(cfg["config_path"]).parent == CONFIG_DIR:
        args.dataset = Path(cfg["config_path"]).stem  # 'bp4d' -> 'BP4D'
    args.dataset_name = cfg["name"]
    args.num_classes = int(cfg["num_classes"])
    args.neighbor_num = int(cfg["neighbor_num"])
    if args.dataset_path is None:
        args.dataset_path = str(cfg["dataset_path"])
    check_ranges(parser, args, from_yaml=from_yaml)
    apply_protocol(parser, args, argv)
    if args.gpu_ids and "CUDA_VISIBLE_DEVICES" not in os.environ and "RANK" not in os.environ:
        # the release's --gpu_ids; a single process uses the first listed device
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu_ids
    return args


def fold_given(argv) -> bool:
    """Whether argv names a fold (-f K, -fK, --fold K, --fold=K)."""
    return any(a in ("-f", "--fold") or a.startswith("--fold=") or (a.startswith("-f") and a[2:3].isalnum()
                                                                     and not a.startswith("--")) for a in argv)


def apply_protocol(parser: argparse.ArgumentParser, args, argv) -> None:
    """args.protocol from --protocol or the dataset config; the hybrid protocol has no folds
    (args.fold None), and a --fold given with it is a one-line error that says so."""
    cfg = args.dataset_config
    args.protocol = args.protocol or cfg.get("protocol", "folds")
    if args.protocol == "hybrid":
        if fold_given(argv):
            prefix = cfg.get("list_prefix", cfg["name"])
            parser.error(f"--fold: {cfg['name']} uses the hybrid protocol (train / val / test lists "
                         f"{prefix}_{{train,val,test}}_*.txt, no folds): leave --fold out, or add --protocol folds "
                         f"for fold lists such as tool/prepare_lists.py --from-csv writes")
        args.fold = None


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


def write_args(args, folder: Path, provenance: dict | None = None) -> Path:
    """args.yaml: the resolved arguments, and (when given) what produced the run (provenance.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "args.yaml"
    values = serialisable_args(args)
    if provenance is not None:
        values["provenance"] = provenance
    with open(path, "w") as fh:
        yaml.safe_dump(values, fh, sort_keys=True)
    return path
