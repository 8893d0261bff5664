"""Stage 1 of ME-GraphAU: backbone + ANFL (AU-specific features and the facial graph).

    python train_stage1.py --dataset BP4D --arc resnet50 --exp-name resnet_first_stage -b 64 -lr 0.0001 --fold 1
    torchrun --nproc_per_node 4 train_stage1.py ...      # several GPUs (DDP)

The training run, checkpoints and evaluation are engine.training.run_training (shared with stage 2).
"""
from __future__ import annotations

import argparse
import sys

from megraphau import conf
from megraphau.engine import cli

EXAMPLES = """examples:
  python train_stage1.py --dataset SYNTH                       # the synthetic set with its own defaults
  python train_stage1.py --dataset BP4D --arc resnet50 --exp-name resnet_first_stage -b 64 -lr 0.0001 --fold 1
  python train_stage1.py --dataset DISFA --arc resnet50 --fold 2 --device cuda --amp bf16
  torchrun --nproc_per_node 4 train_stage1.py --dataset BP4D --arc swin_transformer_base -b 16 --fold 1
  python train_stage1.py ... --resume-training results/EXP/bs_64_seed_0_lr_0.0001/last.pth   # continue a run
"""


def get_args_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="train_stage1.py",
        description="ME-GraphAU stage 1 training: backbone + ANFL (AU-specific features and the facial "
                    "graph). Defaults shown are resolved for --dataset (its YAML's defaults).",
        parents=[conf.get_conf_parser()], epilog=EXAMPLES, formatter_class=conf.HelpFormatter)


def main(args) -> dict:
    """Train stage 1 as `args` say (parsed by conf.parse_args); returns training.run_training's dict."""
    return cli.train_main(args, stage=1)


if __name__ == "__main__":
    sys.exit(cli.train_cli(get_args_parser(), stage=1))
