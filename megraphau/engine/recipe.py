"""The training recipe (ME-GraphAU, Luo et al., IJCAI-ECAI 2022, as the release trains): the
model a run starts from (ImageNet backbone, --resume, or --init: finetune.py), AdamW (betas
0.9/0.999, --optimizer-eps, weight decay on all parameters) or, with --optimizer sam,
OpenGraphAU's SAM around that AdamW (sam.py: --sam-rho, --sam-adaptive), the per-step cosine
learning rate without warm-up, the gradient scaler of --amp fp16, and the per-epoch seed that
makes an interrupted run continue exactly."""
from __future__ import annotations

import math
import warnings

import torch

from megraphau import utils
from megraphau.engine.checkpoints import warn_if_other_fold
from megraphau.engine.finetune import init_from_checkpoint
from megraphau.engine.sam import SAM
from megraphau.model import build_model, load_model
from megraphau.utils import log


def check_amp(args) -> None:
    """--amp applies to CUDA only: say so once on any other device."""
    if args.amp != "none" and args.device.type != "cuda":
        warnings.warn(f"--amp {args.amp} applies to CUDA only; running in float32 on {args.device}", stacklevel=2)


def pretrained_arg(args):
    """What build_model's `pretrained` gets: no ImageNet file when a checkpoint follows."""
    if args.pretrained is not None and args.pretrained.lower() == "none":
        return False
    if args.resume or args.resume_training or getattr(args, "init", None):
        return False
    return args.pretrained


def build_training_model(args, stage: int):
    """The model a training run starts from: ImageNet backbone, --resume (a stage-1 file
    initialises stage 2: shared keys load, the graph head starts fresh) or --init (what fits of
    any ME-GraphAU / OpenGraphAU model: finetune.init_from_checkpoint)."""
    variant = args.dataset_config.get("variant", "megraphau")  # OpenGraphAU: 41 AUs
    init = getattr(args, "init", None)
    if init and args.resume and not args.resume_training:
        raise utils.UserError("--init and --resume both name the starting model: give one (--resume: the "
                              "stage-1 model of this AU set; --init: any model to fine-tune from)")
    if init and not args.resume_training:
        model = build_model(stage, args.arc, args.num_classes, args.neighbor_num, args.metric, pretrained=False,
                            variant=variant)
        init_from_checkpoint(model, init, args.dataset_config["au_names"])
        return model
    if args.resume and not args.resume_training:
        loaded = load_model(args.resume, arc=args.arc, stage=stage, num_classes=args.num_classes,
                            variant=variant, neighbor_num=args.neighbor_num, metric=args.metric,
                            stage1_into_stage2=True)
        warn_if_other_fold(args.resume, loaded.facts["fold"], args.fold, testing=False)
        log.info("initialised from %s", args.resume)
        return loaded.model
    if stage == 2 and not args.resume_training:
        warnings.warn("stage 2 without --resume: the paper starts stage 2 from a stage-1 checkpoint", stacklevel=2)
    return build_model(stage, args.arc, args.num_classes, args.neighbor_num, args.metric,
                       pretrained=pretrained_arg(args), variant=variant)


def build_optimizer(args, model) -> torch.optim.Optimizer:
    """AdamW as the release; --optimizer sam wraps it in SAM (rho --sam-rho, ASAM when
    --sam-adaptive), whose two-pass step loop.train_one_epoch takes with sam.sam_step."""
    adamw = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(0.9, 0.999),
                              eps=args.optimizer_eps, weight_decay=args.weight_decay)
    if getattr(args, "optimizer", "adamw") == "sam":
        return SAM(adamw, rho=args.sam_rho, adaptive=args.sam_adaptive)
    return adamw


def build_grad_scaler(args) -> torch.amp.GradScaler:
    """Loss scaling for --amp fp16 on CUDA; a no-op scaler otherwise."""
    return torch.amp.GradScaler("cuda", enabled=args.amp == "fp16" and args.device.type == "cuda")


def cosine_lr(step: int, total_steps: int, lr0: float) -> float:
    """lr0 * (1 + cos(pi * t / T)) / 2: the release's per-step cosine schedule (no warm-up)."""
    if total_steps <= 0:
        return lr0
    return lr0 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)) / 2.0


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Every epoch reseeds all RNGs from (seed, epoch, rank): data order, augmentation and any
    model randomness are then the same whether or not a run was interrupted before it."""
    return (seed * 1_000_003 + epoch * 1009 + rank) % 2**31
