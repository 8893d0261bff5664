"""A training run (train_stage1.py, train_stage2.py): claim the run folder, set up the data, model,
optimizer and state, train the epochs with an evaluation every --eval-every epochs (on the test
fold: the published ME-GraphAU protocol; on the val split under the hybrid protocol, as
OpenGraphAU's train_stage1.py), keep the best evaluated epoch by mean F1, and write the
checkpoints after each epoch (ME-GraphAU, Luo et al., IJCAI-ECAI 2022).

The recipe (recipe.py): the training split's class weights in the weighted asymmetric loss
(losses.py), plus --lam x the edge loss in ME-GraphAU's stage 2 (OpenGraphAU's stage 2: the AU
loss alone); AdamW, or SAM around it (--optimizer sam); a cosine learning rate set before every step.
Outputs go to the run folder results/{exp-name}/bs_{b}_seed_{s}_lr_{lr}/: train.log, args.yaml,
metrics.csv, curves.png, last.pth (the training state, resumable with --resume-training),
best.pth and the release's cur_model_fold{k}.pth / epoch{E}_model_fold{k}.pth (checkpoints.py).
Every run claims its folder first (run_folder.py: a lock, and no new run replaces an earlier
run's files without --overwrite).
"""
from __future__ import annotations

import time
from pathlib import Path

from torch.nn.parallel import DistributedDataParallel

from megraphau import conf, provenance, utils
from megraphau.engine.checkpoints import (
    TrainState,
    finish_run_files,
    resume_training_state,
    run_facts,
    save_epoch_checkpoints,
)
from megraphau.engine.data import (
    build_datasets,
    build_eval_loader,
    build_train_loader,
    eval_split,
    is_hybrid,
    list_files_of_run,
    prepare_synth,
)
from megraphau.engine.evaluation import test_checkpoints
from megraphau.engine.logs import setup_logging
from megraphau.engine.loop import predict, train_one_epoch
from megraphau.engine.losses import WeightedAsymmetricLoss
from megraphau.engine.metrics import compute_au_metrics, format_au_table
from megraphau.engine.recipe import build_grad_scaler, build_optimizer, build_training_model, check_amp, epoch_seed
from megraphau.engine.run_folder import claim_run_folder, log_removed
from megraphau.utils import log


def optimizer_text(args) -> str:
    """--optimizer as the log states it (SAM with its rho and variant)."""
    if getattr(args, "optimizer", "adamw") != "sam":
        return "adamw"
    return f"sam (AdamW, rho {args.sam_rho:g}, {'adaptive' if args.sam_adaptive else 'plain'})"


def run_training(args, stage: int) -> dict:
    """Train stage `stage` (1 or 2) as configured by `args`; see the module docstring.

    Returns {'run_dir', 'best_f1', 'history', 'last_metrics'} ('--evaluate': test_checkpoints'
    summary). Raises loop.NonFiniteLossError on a NaN/inf loss (after keeping the last good
    checkpoint).
    """
    if args.fold == "all":
        raise utils.UserError("training takes one fold (--fold 1, 2 or 3); 'all' is for test.py")
    if getattr(args, "init", None) and args.evaluate:
        raise utils.UserError("--evaluate tests --resume; --init is for training")
    if args.evaluate and not args.resume:
        raise utils.UserError("--evaluate needs --resume CHECKPOINT")
    out_dir = conf.run_dir(args)
    kind = "evaluate" if args.evaluate else "resume" if args.resume_training else "train"
    with claim_run_folder(args, out_dir, kind) as lock:
        if args.evaluate:  # a test run: results.json/csv and test.log beside the run's files
            setup_logging(out_dir, "test.log")
            check_amp(args)
            return test_checkpoints(args, out_dir=out_dir, folds=[None if args.fold is None else int(args.fold)])
        setup_logging(out_dir, "train.log")
        log_removed(lock)
        return train_in_folder(args, stage, out_dir)


def set_up_training(args, stage: int, out_dir: Path) -> tuple:
    """Everything of a run that bad input can break (lists, images, checkpoints, --resume-training),
    before any rank waits for another: train_in_folder runs it through utils.agree_on_errors.
    Returns (train_loader, eval_loader (test fold, or val under the hybrid protocol), model (not
    yet DDP-wrapped), facts, optimizer, scaler, criterion, state)."""
    split = eval_split(args)
    data = build_datasets(args, stage, splits=("train", split))
    train_ds, eval_ds = data["train"], data[split]
    log.info("train images %d, %s images %d, class weights %s", len(train_ds), split, len(eval_ds),
             " ".join(f"{w:.3f}" for w in train_ds.class_weights.tolist()))
    train_loader = build_train_loader(train_ds, args)
    eval_loader = build_eval_loader(eval_ds, args)
    files = list_files_of_run(args, splits=("train", split), stage=stage)
    if args.resume and not args.resume_training:
        files["init_checkpoint"] = Path(args.resume)
    if getattr(args, "init", None) and not args.resume_training:
        files["init_checkpoint"] = Path(args.init)
    prov = provenance.collect(device=args.device, files=files)
    if utils.is_main_process():
        conf.write_args(args, out_dir, provenance=prov)
    log.info("provenance: %s", provenance.header_line(prov))

    model = build_training_model(args, stage)
    model.set_grad_checkpointing(args.grad_checkpointing)  # memory for time; same results
    model.to(args.device)
    facts = {**run_facts(args, model), "provenance": prov}  # the checkpoints' own record
    optimizer = build_optimizer(args, model)
    scaler = build_grad_scaler(args)
    criterion = WeightedAsymmetricLoss(train_ds.class_weights).to(args.device)
    state = resume_training_state(args, model, optimizer, scaler) if args.resume_training else TrainState()
    return train_loader, eval_loader, model, facts, optimizer, scaler, criterion, state


def train_in_folder(args, stage: int, out_dir: Path) -> dict:
    """The training of run_training in its claimed folder (logging already set up)."""
    main_proc = utils.is_main_process()
    check_amp(args)
    split = eval_split(args)
    where = "hybrid protocol (train / val / test)" if is_hybrid(args) else f"fold {args.fold}"
    log.info("stage %d training: dataset %s %s, --arc %s, --optimizer %s, device %s, world size %d, run folder %s",
             stage, args.dataset_name, where, args.arc, optimizer_text(args), args.device, args.world_size, out_dir)
    utils.set_seed(args.seed + args.rank)
    prepare_synth(args, [args.fold])
    train_loader, eval_loader, model, facts, optimizer, scaler, criterion, state = \
        utils.agree_on_errors(set_up_training, args, stage, out_dir)
    eval_labels = eval_loader.dataset.labels
    eval_desc = "val split" if split == "val" else "test fold"
    net = model
    if args.distributed:
        net = DistributedDataParallel(model, device_ids=[args.local_rank] if args.device.type == "cuda" else None)
    last_metrics = None
    show_bar = main_proc and not args.no_progress
    for epoch in range(state.epoch, args.epochs):
        t0 = time.time()
        seed = epoch_seed(args.seed, epoch, args.rank)
        utils.set_seed(seed)
        train_loader.generator.manual_seed(seed)
        train_loader.sampler.set_epoch(epoch)
        train_loss, lr = train_one_epoch(args, net, train_loader, optimizer, scaler, criterion, state, epoch,
                                         out_dir, show_bar)

        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "mean_f1": None, "mean_acc": None,
               "f1": None}
        is_last = epoch + 1 == args.epochs
        if args.eval_every > 0 and ((epoch + 1) % args.eval_every == 0 or is_last):
            utils.broadcast_buffers(model)
            probs = predict(model, eval_loader, args.device, args.amp, progress=show_bar, desc=eval_desc)
            last_metrics = compute_au_metrics(probs, eval_labels)
            row.update(mean_f1=last_metrics["mean_f1"], mean_acc=last_metrics["mean_acc"],
                       f1=[float(v) for v in last_metrics["f1"]], acc=[float(v) for v in last_metrics["acc"]],
                       mean_f1_coded=last_metrics["mean_f1_coded"], mean_acc_coded=last_metrics["mean_acc_coded"])
        row["time_s"] = time.time() - t0
        state.history.append(row)
        state.epoch = epoch + 1

        improved = row["mean_f1"] is not None and row["mean_f1"] > state.best_f1
        if improved:
            state.best_f1 = row["mean_f1"]
        if main_proc:
            f1_text = "-" if row["mean_f1"] is None else f"{100 * row['mean_f1']:.2f}"
            acc_text = "-" if row["mean_acc"] is None else f"{100 * row['mean_acc']:.2f}"
            coded = ""
            if row["mean_f1"] is not None and not last_metrics["coded"].all():
                coded = (f" (over the {int(last_metrics['coded'].sum())} coded AUs: F1 "
                         f"{100 * row['mean_f1_coded']:.2f}, acc {100 * row['mean_acc_coded']:.2f})")
            log.info("epoch %d/%d  lr %.3g  train loss %.5f  %s mean F1 %s  mean acc %s%s  (%.1f s)%s",
                     epoch + 1, args.epochs, lr, train_loss, split, f1_text, acc_text, coded, row["time_s"],
                     "  (best)" if improved else "")
            if row["f1"] is not None:
                log.info("\n%s", format_au_table(facts["au_names"], last_metrics["f1"], last_metrics["acc"]))
            save_epoch_checkpoints(args, model, optimizer, scaler, state, facts, out_dir, improved)
        utils.barrier()

    if main_proc and state.epoch == args.epochs and state.history:
        finish_run_files(args, model, state, facts, out_dir)
    log.info("done: best %s mean F1 %s; checkpoints in %s", split,
             "-" if state.best_f1 < 0 else f"{100 * state.best_f1:.2f}", out_dir)
    if is_hybrid(args) and main_proc:
        log.info("test split: python test.py --resume %s", out_dir / "best.pth")
    return {"run_dir": out_dir, "best_f1": state.best_f1, "history": state.history, "last_metrics": last_metrics}
