"""Running the command-line entries in-process, for the fault tests: argument lists for a tiny
SYNTH run, each entry's exit code, and the one error line a user sees."""
from __future__ import annotations

import contextlib
import io

import demo
import test as test_mod
import train_stage1
import train_stage2
from megraphau.engine import cli as engine_cli
from megraphau.synth import generate_synthetic_dataset


def tiny_synth_root(tmp_path_factory, name: str):
    """8 faces per part: 16 train / 8 test images per fold, 64 pixels."""
    root = tmp_path_factory.mktemp(name)
    generate_synthetic_dataset(root, subjects_per_part=1, tasks=2, frames=4, seed=0, size=64)
    return root


def train_argv(root, out, *extra, epochs=1):
    return ["--dataset", "SYNTH", "--dataset-path", str(root), "--output-dir", str(out), "--arc", "resnet18",
            "--pretrained", "none", "--crop-size", "48", "-b", "4", "-lr", "0.001", "-e", str(epochs), "-j", "0",
            "--no-progress", "--eval-every", "0", *extra]


def eval_argv(root, out, checkpoint, *extra):
    return ["--dataset", "SYNTH", "--dataset-path", str(root), "--output-dir", str(out), "--crop-size", "48",
            "-b", "4", "-j", "0", "--no-progress", "--resume", str(checkpoint), *extra]


def exit_code(run, *args) -> int:
    """The exit code of a command-line entry: its return value or its SystemExit's code."""
    try:
        return run(*args)
    except SystemExit as exc:
        return exc.code


def stage1_cli(argv):
    return exit_code(engine_cli.train_cli, train_stage1.get_args_parser(), 1, argv)


def stage2_cli(argv):
    return exit_code(engine_cli.train_cli, train_stage2.get_args_parser(), 2, argv)


def eval_cli(argv):
    return exit_code(engine_cli.test_cli, test_mod.get_args_parser(), argv)


def demo_cli(argv):
    return exit_code(demo.cli, argv)


def one_error_line(capsys) -> str:
    """stderr of the last command: exactly one non-empty line and no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def captured_run(main, argv) -> tuple:
    """(exit code, stdout, stderr) of ``main(argv)`` run in-process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()
