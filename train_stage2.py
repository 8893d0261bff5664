"""Stage 2 of ME-GraphAU: MEFL (multi-dimensional edge features, gated graph) on top of stage 1.

    python train_stage2.py --dataset BP4D --arc resnet50 --exp-name resnet_second_stage \\
        --resume results/resnet_first_stage/bs_64_seed_0_lr_0.0001/best.pth --fold 1 --lam 0.05 -lr 0.00001

Loss: the weighted asymmetric loss plus --lam times the cross-entropy of the edge logits
against the co-occurrence classes 2*a_i + a_j. --resume names the stage-1 checkpoint: its
backbone, global_linear, class_linears and sc load, the edge and graph parts start fresh.
Checkpoints and logs use the fold being trained (the release's stage 2 wrote fold+1).
The training run is engine.training.run_training (shared with stage 1).
"""
from __future__ import annotations

import argparse
import sys

from megraphau import conf
from megraphau.engine import cli

EXAMPLES = """examples:
  python train_stage2.py --dataset SYNTH --resume results/synth_stage1/bs_16_seed_0_lr_0.001/best.pth
  python train_stage2.py --dataset BP4D --arc resnet50 --exp-name resnet_second_stage -b 64 -lr 0.00001 \\
      --fold 1 --lam 0.05 --resume results/resnet_first_stage/bs_64_seed_0_lr_0.0001/best.pth
"""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_stage2.py",
        description="ME-GraphAU stage 2 training: MEFL (multi-dimensional edge features and the gated "
                    "graph), initialised from a stage-1 checkpoint (--resume). Defaults shown are resolved "
                    "for --dataset (its YAML's defaults).",
        parents=[conf.get_conf_parser()], epilog=EXAMPLES, formatter_class=conf.HelpFormatter)
    parser.set_defaults(learning_rate=1e-5)  # the published stage-2 commands run at 1e-5
    return parser


def main(args) -> dict:
    """Train stage 2 as `args` say (parsed by conf.parse_args); returns training.run_training's dict."""
    return cli.train_main(args, stage=2)


if __name__ == "__main__":
    sys.exit(cli.train_cli(get_args_parser(), stage=2))
