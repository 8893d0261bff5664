"""Stage 2 of ME-GraphAU: MEFL (multi-dimensional edge features, gated graph) on top of stage 1.

    python train_stage2.py --dataset BP4D --arc resnet50 --exp-name resnet_second_stage \
        --resume results/resnet_first_stage/bs_64_seed_0_lr_0.0001/best.pth --fold 1 --lam 0.05 -lr 0.00001

Loss: the weighted asymmetric loss plus --lam times the cross-entropy of the edge logits
against the co-occurrence classes 2*a_i + a_j (SPEC §4). --resume names the stage-1 checkpoint:
its backbone, global_linear, class_linears and sc load, the edge and graph parts start fresh.
Checkpoints and logs use the fold being trained (the release's stage 2 wrote fold+1).
The loop itself is train_stage1.run_training (shared by both stages).
"""
from __future__ import annotations

import argparse
import sys

import conf
import train_stage1


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("ME-GraphAU stage 2 (MEFL) training", parents=[conf.get_conf_parser()])
    # SPEC §4: stage 2 runs at 1e-5 (the published commands)
    parser.set_defaults(learning_rate=1e-5)
    return parser


def main(args) -> dict:
    return train_stage1.main(args, stage=2)


if __name__ == "__main__":
    sys.exit(train_stage1.cli(2, get_args_parser()))
