"""What the scripts' main() and __main__ call: train_main / test_main (one process or torchrun)
and the command-line entries train_cli / test_cli.

The entries turn user errors into one line and exit code 2 (utils.exit_on_user_error), a NaN
loss into 3 and Ctrl-C into 130 with the command that continues the run; under torchrun the
set-up's errors stop every rank together (utils.agree_on_errors)."""
from __future__ import annotations

import shlex
import sys

from megraphau import conf, utils
from megraphau.engine.evaluation import test_checkpoints
from megraphau.engine.logs import setup_logging
from megraphau.engine.loop import NonFiniteLossError
from megraphau.engine.recipe import check_amp
from megraphau.engine.run_folder import claim_run_folder, log_removed
from megraphau.engine.training import run_training


def train_main(args, stage: int) -> dict:
    """Set up the process (torchrun or single), train stage `stage`, tear down."""
    utils.init_distributed_mode(args)
    result = run_training(args, stage)
    # only after success: a failed rank exits without waiting on peers that may be gone
    utils.cleanup_distributed()
    return result


def test_main(args) -> dict:
    """test.py's main: the checkpoint(s) of --resume on --fold (or every fold with 'all'; the test
    split under the hybrid protocol), in a claimed run folder (run_folder.py: a test run refuses
    earlier results without --overwrite)."""
    if not args.resume:
        raise utils.UserError("test.py needs --resume CHECKPOINT (use {fold} in the name with --fold all)")
    utils.init_distributed_mode(args)
    out_dir = conf.run_dir(args)
    with claim_run_folder(args, out_dir, "test") as lock:
        setup_logging(out_dir, "test.log")
        log_removed(lock)
        check_amp(args)
        # the hybrid protocol (args.fold None): the test split
        folds = [None] if args.fold is None else list(range(1, args.N_fold + 1)) if args.fold == "all" \
            else [int(args.fold)]
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
    stage{stage}), train; exit code 0, 2 (a user error: one line), 3 (non-finite loss),
    130 (Ctrl-C: the last checkpoint and the command that continues from it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parsed = []

    def parse_and_train():
        parsed.append(conf.parse_args(parser, argv, section=f"stage{stage}"))
        return train_main(parsed[0], stage)

    try:
        utils.exit_on_user_error(parse_and_train)
    except NonFiniteLossError:
        return 3
    except KeyboardInterrupt:
        if utils.is_main_process():
            print(f"\n{interrupted_message(parser.prog, argv, parsed[0] if parsed else None)}", file=sys.stderr,
                  flush=True)
        return 130
    return 0


def test_cli(parser, argv=None) -> int:
    """Command-line entry of test.py: exit code 0, 2 (a user error: one line), 130 (Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        utils.exit_on_user_error(lambda: test_main(conf.parse_args(parser, argv, section="test")))
    except KeyboardInterrupt:
        if utils.is_main_process():
            print("\ninterrupted: no results were written; run the same command again", file=sys.stderr, flush=True)
        return 130
    return 0
