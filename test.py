"""Evaluate ME-GraphAU checkpoints on a test fold: per-AU F1 and accuracy, the papers' metric.

    python test.py --dataset BP4D --resume MEFARG_resnet50_BP4D_fold1.pth --fold 1
    python test.py --dataset BP4D --resume 'MEFARG_resnet50_BP4D_fold{fold}.pth' --fold all

The checkpoint decides the stage, backbone and AU count (model.load_model); a flag that
contradicts it is an error naming both. This project's checkpoints also name their dataset,
so --dataset is needed only for the release's files. --fold all tests folds 1..N ({fold} in
--resume is replaced by each fold number) and prints the per-AU table averaged over the folds,
as the papers report. A checkpoint whose fold differs from the tested fold gets a warning (its
test subjects were training data). Outputs in results/{exp-name}/bs_{b}_seed_{s}_lr_{lr}/:
results.json, results.csv, test.log and the figures (a folder holding an earlier run's results
is refused unless --overwrite, run_folder.py), each a PNG with the CSV of its numbers:
f1_bars (per-AU F1 per fold, their mean, the paper's numbers for BP4D / DISFA),
pr_curves_fold{k} (per-AU precision-recall, the --threshold point marked) and
cooccurrence_fold{k} (the test fold's ground-truth P(AU i and AU j) beside that of the predicted
AUs and, for a stage-2 ME-GraphAU model, the mean P(both) of its edge logits; results.json's
"cooccurrence" gives the Pearson r of each against the truth with a permutation p-value). Under
torchrun each rank tests a share of the images; every image counts exactly once. The evaluation
itself is engine.evaluation.test_checkpoints.
"""
from __future__ import annotations

import argparse
import sys

from megraphau import conf
from megraphau.engine import cli

EXAMPLES = """examples:
  python test.py --resume results/synth_stage2/bs_16_seed_0_lr_0.0003/best.pth   # the file names its dataset
  python test.py --dataset DISFA --arc swin_transformer_base --exp-name test_fold3 \\
      --resume checkpoints/MEFARG_swin_base_DISFA_fold3.pth --fold 3
  python test.py --dataset BP4D --resume 'checkpoints/MEFARG_resnet50_BP4D_fold{fold}.pth' --fold all
"""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="test.py",
        description="Test ME-GraphAU / OpenGraphAU checkpoints on a test fold (per-AU F1 and accuracy). "
                    "Defaults shown are resolved for --dataset (its YAML's defaults). The training flags of "
                    "the release's commands (-lr, -e, ...) are accepted and ignored.",
        parents=[conf.get_common_parser(), conf.get_training_parser(hidden=True)], epilog=EXAMPLES,
        formatter_class=conf.HelpFormatter)
    parser.add_argument("--stage", default=None, type=int, choices=[1, 2],
                        help="model stage (default: read from the checkpoint; a different value is an error)")
    parser.add_argument("--threshold", default=0.5, type=float,
                        help="an AU counts as present when its probability is at least this")
    # the checkpoint decides the backbone and the graph metric unless given explicitly
    parser.set_defaults(arc=None, metric=None)
    for action in parser._actions:
        if action.dest == "fold":
            action.help = "fold 1..N-fold, or 'all': every fold, --resume holding {fold}, averaged as the papers do"
        elif action.dest in ("arc", "metric"):
            action.help += " (default: the checkpoint's)"
    return parser


def main(args) -> dict:
    """Test as `args` say (parsed by conf.parse_args); returns the summary dict (results.json)."""
    return cli.test_main(args)


if __name__ == "__main__":
    sys.exit(cli.test_cli(get_args_parser()))
