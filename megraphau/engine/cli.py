"""What the scripts' main() and __main__ call: train_main / test_main (one process or torchrun)
and the command-line entries train_cli / test_cli.

The entries go through the front door of every script (errors.run_cli): a user error is one line
and exit code 2, a NaN loss 3, Ctrl-C 130 with the command that continues the run, a bug its
traceback and 1; under torchrun the set-up's errors stop every rank together
(utils.agree_on_errors). Every file a run reads (--resume, --resume-training, --pretrained, the
fold's lists) is checked before its run folder is created or claimed (check_inputs), so that a
run that cannot start leaves no folder behind."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from megraphau import conf, errors, utils
from megraphau.data.lists import DatasetError, list_file
from megraphau.engine.data import list_prefix
from megraphau.engine.evaluation import test_checkpoints
from megraphau.engine.logs import setup_logging
from megraphau.engine.loop import NonFiniteLossError
from megraphau.engine.recipe import check_amp
from megraphau.engine.run_folder import claim_run_folder, log_removed
from megraphau.engine.training import run_training
from megraphau.synth import DEFAULT_ROOT as SYNTH_DEFAULT_ROOT


def checkpoint_inputs(args, folds) -> list[tuple[str, Path]]:
    """(flag, path) of the checkpoint files a run reads: --resume (its {fold} filled in for each
    of `folds`), --resume-training, a --pretrained path."""
    files = []
    if args.resume:
        files += [("--resume", Path(args.resume.replace("{fold}", str(k)))) for k in folds]
    if getattr(args, "resume_training", None):
        files.append(("--resume-training", Path(args.resume_training)))
    pretrained = getattr(args, "pretrained", None)
    if pretrained and pretrained.lower() != "none":
        files.append(("--pretrained", Path(pretrained)))
    return list(dict.fromkeys(files))


def synth_generation_allowed(args) -> bool:
    """A SYNTH run whose lists are missing generates them only into the default folder (data/SYNTH,
    or the YAML's dataset_path), or into a folder that does not exist or is empty when --dataset
    SYNTH was given on the command line; anywhere else a missing list is a mistyped --dataset-path
    far more often than a wish for a new data set there."""
    path = Path(args.dataset_path)
    if path.resolve() in {Path(args.dataset_config["dataset_path"]).resolve(), SYNTH_DEFAULT_ROOT.resolve()}:
        return True
    empty = not path.exists() or (path.is_dir() and not any(path.iterdir()))
    return empty and getattr(args, "dataset_given", False)


def check_inputs(args, folds, splits=("train", "test")) -> None:
    """Every file the run reads exists: the checkpoints of checkpoint_inputs and the list files of
    `folds` (a SYNTH set that may be generated aside). One-line errors naming the file; run before
    the run folder is created, under torchrun on every rank (utils.agree_on_errors)."""
    for flag, path in checkpoint_inputs(args, folds):
        if path.is_dir():
            raise errors.UserError(f"{flag} {path}: is a folder, not a checkpoint file")
        if not path.is_file():
            raise errors.UserError(f"{flag} {path}: checkpoint not found (checkpoints/checkpoints.txt lists the "
                                   f"published files and where to get them)")
    cfg = args.dataset_config
    list_dir = Path(args.dataset_path) / "list"
    needed = [list_file(list_dir, list_prefix(args) if k is None else cfg["name"], kind, k, split)
              for k in folds for split in splits for kind in ("img_path", "label")]
    missing = [p for p in needed if not p.is_file()]
    if not missing:
        return
    if cfg.get("synthetic"):
        if synth_generation_allowed(args):
            return
        raise DatasetError(f"{args.dataset_path} holds no {cfg['name']} lists ({missing[0].name} not found); "
                           f"check --dataset-path, or generate the set there first: python tool/synth_faces.py "
                           f"--output {args.dataset_path}")
    raise DatasetError(f"{missing[0]}: list file not found (write the lists with tool/prepare_lists.py, see "
                       f"data/README.md)")


def train_main(args, stage: int) -> dict:
    """Set up the process (torchrun or single), check the inputs, train stage `stage`, tear down."""
    args.stage = stage  # in args.yaml: what the run is (tool/plot_runs.py's labels)
    utils.init_distributed_mode(args)
    if args.fold != "all":  # run_training refuses 'all' in its own words
        folds = [None] if args.fold is None else [int(args.fold)]  # None: the hybrid protocol
        splits = ("test",) if args.evaluate else ("train", "val", "test") if args.fold is None else ("train", "test")
        utils.agree_on_errors(check_inputs, args, folds, splits)
    result = run_training(args, stage)
    # only after success: a failed rank exits without waiting on peers that may be gone
    utils.cleanup_distributed()
    return result


def test_main(args) -> dict:
    """test.py's main: the checkpoint(s) of --resume on --fold (or every fold with 'all'; the test
    split under the hybrid protocol), in a claimed run folder (run_folder.py: a test run refuses
    earlier results without --overwrite)."""
    if not args.resume:
        raise errors.UserError("test.py needs --resume CHECKPOINT (use {fold} in the name with --fold all)")
    utils.init_distributed_mode(args)
    # the hybrid protocol (args.fold None): the test split
    folds = [None] if args.fold is None else list(range(1, args.N_fold + 1)) if args.fold == "all" \
        else [int(args.fold)]
    utils.agree_on_errors(check_inputs, args, folds, ("test",))
    out_dir = conf.run_dir(args)
    with claim_run_folder(args, out_dir, "test") as lock:
        setup_logging(out_dir, "test.log")
        log_removed(lock)
        check_amp(args)
        summary = test_checkpoints(args, out_dir, folds)
    utils.cleanup_distributed()  # only after success, as in train_main
    return summary


def without_option(argv: list[str], flag: str) -> list[str]:
    """argv without `flag VALUE` / `flag=VALUE`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def resume_command(script: str, argv: list[str], args) -> str:
    """The command line that continues an interrupted run from its last.pth."""
    last = conf.run_dir(args) / "last.pth"
    rest = [a for a in without_option(argv, "--resume-training") if a != "--overwrite"]
    world = getattr(args, "world_size", 1) or 1
    launcher = ["torchrun", "--nproc_per_node", str(world)] if world > 1 else ["python"]
    return shlex.join([*launcher, script, *rest, "--resume-training", str(last)])


def interrupted_message(script: str, argv: list[str], args) -> str:
    """What Ctrl-C leaves: the last checkpoint and how to continue from it."""
    if args is None:
        return "interrupted before the run started; nothing was written"
    last = conf.run_dir(args) / "last.pth"
    if not last.is_file():
        return "interrupted before the first epoch ended: no checkpoint was written; start again with the same command"
    return (f"interrupted: the last checkpoint is {last} (written at the end of the last finished epoch); "
            f"continue with: {resume_command(script, argv, args)}")


def train_cli(parser, stage: int, argv=None) -> int:
    """Command-line entry of the training scripts: parse (the dataset's defaults of section
    stage{stage}), train; exit code 0, 1 (a bug: its traceback), 2 (a user error: one line),
    3 (non-finite loss), 130 (Ctrl-C: the last checkpoint and the command that continues from it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parsed = []

    def parse_and_train(argv):
        parsed.append(conf.parse_args(parser, argv, section=f"stage{stage}"))
        train_main(parsed[0], stage)

    def outcome(exc: BaseException):
        if isinstance(exc, NonFiniteLossError):
            return 3  # already logged, with the last good checkpoint
        return utils.torchrun_outcome(exc)

    return errors.run_cli(parse_and_train, argv, outcome=outcome,
                          interrupted=lambda: interrupted_message(parser.prog, argv, parsed[0] if parsed else None))


def test_cli(parser, argv=None) -> int:
    """Command-line entry of test.py: exit code 0, 1 (a bug), 2 (a user error: one line), 130 (Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def parse_and_test(argv):
        test_main(conf.parse_args(parser, argv, section="test"))

    return errors.run_cli(parse_and_test, argv, outcome=utils.torchrun_outcome,
                          interrupted=lambda: "interrupted: no results were written; run the same command again")
