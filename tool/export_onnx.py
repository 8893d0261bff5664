"""Export a ME-GraphAU or OpenGraphAU checkpoint to ONNX, verified against PyTorch.

Reads any checkpoint of this project or of the public releases (ME-GraphAU stage 1 and 2, every
backbone; OpenGraphAU stage 1 and 2) with model.load_model, exports it with torch's dynamo
exporter (input `images` (B, 3, S, S) ImageNet-normalised float32, dynamic batch; outputs `probs`
and, for stage-2 ME-GraphAU, `edge_logits`), stores the model's facts (AU names, crop, stage,
backbone, source file and sha256, versions) in the file's metadata, and runs the file with ONNX
Runtime at batch 1 and 5 against PyTorch before it is written under its name: probabilities
must agree within 1e-4, edge logits within 1e-4 of their scale (or, beyond that, be as close to
a float64 run of the model as PyTorch's float32 result is: float32 rounding alone moves the edge
logits of a ResNet-50 by about 1e-4). Prints one summary line; any error is one line on stderr
with exit code 2.

A release file carries no AU names: --dataset names them (its config's au_names,
au_descriptions and, for stage-1 files, neighbor_num); without it a known AU count is assumed
(12: BP4D, 8: DISFA, 41: OpenGraphAU) and the summary says so.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from megraphau.conf import MAX_CROP_SIZE, one_line_errors
from megraphau.errors import UserError, check_writable_folder, run_cli

EPILOG = """examples:
  # a project checkpoint (it names its AUs and crop)
  python tool/export_onnx.py --resume runs/bp4d_s2/MEFARG_resnet50_fold1.pth --output me_graphau.onnx
  # a released ME-GraphAU file: name its AUs (and stage-1 neighbours) with the dataset
  python tool/export_onnx.py --resume MEFARG_swin_base_DISFA_fold2.pth --dataset DISFA --output disfa.onnx
  # a released OpenGraphAU file (41 AUs are recognised by their count)
  python tool/export_onnx.py --resume OpenGprahAU-ResNet50_second_stage.pth --output opengraphau.onnx
  # ResNets take other crop sizes; pick the opset
  python tool/export_onnx.py --resume ckpt.pth --output small.onnx --crop-size 160 --opset 20
  # also an int8 file (me_graphau.int8.onnx), calibrated on the photograph's crops and your own
  python tool/export_onnx.py --resume ckpt.pth --output me_graphau.onnx --precision int8 --calibration crops/

then, in Python:
  from megraphau.model.onnx_export import OnnxAUModel
  model = OnnxAUModel("me_graphau.onnx", threads=2)
  probs, edge_logits = model(images)   # stage-2 ME-GraphAU; stage 1 / OpenGraphAU: probs only
  model.facts["au_names"], model.crop_size

"""



def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export_onnx.py",
        description="Export a ME-GraphAU / OpenGraphAU checkpoint to a verified ONNX file with its "
                    "facts (AU names, crop, stage, backbone, source) in the metadata.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from megraphau import provenance

    provenance.add_version_flag(parser)
    parser.add_argument("--resume", required=True, metavar="CKPT", help="the checkpoint (.pth) to export")
    parser.add_argument("--output", required=True, metavar="FILE", help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset, 18 or newer (default: the exporter's, recorded in the file)")
    parser.add_argument("--crop-size", type=int, default=None, metavar="S",
                        help="input height and width (default: the checkpoint's, else 224; ResNets only "
                             "take other sizes, at least 32)")
    parser.add_argument("--static-batch", action="store_true",
                        help="a graph for batch 1 only (default: dynamic batch axis)")
    p = parser.add_argument_group("precision")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "int8"),
                   help="int8: also write FILE's .int8.onnx beside it, ONNX Runtime static int8 (QDQ, per-channel "
                        "weights) calibrated on face crops, checked against the float32 file (its probabilities "
                        "within 0.02 on face crops of tests/data/astronaut.jpg; a file that fails is left as "
                        ".failed); bf16 is refused (ONNX Runtime's CPU provider has no bfloat16 kernels: run the "
                        ".pth with bf16)")
    p.add_argument("--calibration", action="append", default=[], metavar="DIR",
                   help="a folder of face crops (tool/crop_faces.py's) added to int8 calibration; repeatable")
    p.add_argument("--guard-data", default=None, metavar="DIR",
                   help="int8: also compare test mean F1 with float32 on this data set root (list/ and img/ of the "
                        "checkpoint's dataset, e.g. data/SYNTH), within 0.5 points")
    p.add_argument("--guard-fold", type=int, default=None, metavar="K",
                   help="--guard-data's test fold (default: the checkpoint's fold, else 1)")
    g = parser.add_argument_group("for files that do not say (the release's)")
    g.add_argument("--arc", default=None, help="backbone, when it cannot be told from the keys")
    g.add_argument("--dataset", default=None, metavar="NAME|YAML",
                   help="dataset config naming the AUs (BP4D, DISFA, OpenGraphAU or a .yaml path); "
                        "also gives a stage-1 release file its neighbor_num")
    g.add_argument("--metric", default=None, choices=("dots", "cosine", "l1"),
                   help="stage-1 graph metric of a release file trained with another than dots")
    return parser


def run_export(args) -> tuple[dict, dict, list[str]]:
    """(export_onnx's report, the exported facts, notes for the summary)."""
    from megraphau import provenance
    from megraphau.inference.detector import load_au_config, neighbor_num_for, resolve_au_set
    from megraphau.inference.faces import preset_for
    from megraphau.model import load_model
    from megraphau.model.facts import AU_SET_FOR_NUM_CLASSES as KNOWN_AU_SETS
    from megraphau.model.onnx_export import export_onnx

    path = Path(args.resume)
    # a stage-1 release file's graph K: --dataset's, else that of its AU count (as AUDetector does)
    neighbor_num = (lambda n: int(load_au_config(args.dataset)["neighbor_num"])) if args.dataset else neighbor_num_for
    loaded = load_model(path, arc=args.arc, metric=args.metric, neighbor_num=neighbor_num)
    facts = dict(loaded.facts)
    n = facts["num_classes"]
    notes = []
    if not args.dataset and not facts.get("au_names") and n in KNOWN_AU_SETS:
        notes.append(f"AU names of {KNOWN_AU_SETS[n]} assumed from the AU count (--dataset to choose)")
    # the AU set AUDetector gives this file (--dataset contradicting the file's names is an error);
    # a file that names its AUs keeps its own names and descriptions
    names, descriptions = resolve_au_set(facts, args.dataset)
    if not facts.get("au_names"):
        facts["au_names"], facts["au_descriptions"] = names, descriptions
    if not facts.get("dataset"):
        facts["dataset"] = load_au_config(args.dataset)["name"] if args.dataset else KNOWN_AU_SETS.get(n)
    if not facts.get("crop_preset"):  # the crops demo.py feeds a model of this AU count
        facts["crop_preset"] = preset_for(n)
    report = export_onnx((loaded.model, facts), args.output, opset=args.opset,
                         batch_dynamic=not args.static_batch, verify=True, crop_size=args.crop_size,
                         provenance=provenance.collect(files={"checkpoint": path}))
    facts["crop_size"] = report["crop_size"]
    return report, facts, notes


def run_int8(args, facts: dict) -> tuple[dict, list[dict]]:
    """Quantise the float32 file to int8 beside it and run the guards: (quantize_int8's report,
    [guard results]). A guard that fails leaves the file as .failed (PrecisionError names it)."""
    import os

    from megraphau.inference import precision

    report = precision.quantize_int8(args.output, folders=args.calibration)
    reference = precision.make_runner("onnxruntime", "fp32", args.output)
    candidate = precision.make_runner("onnxruntime", "int8", report["path"])
    inputs = precision.model_inputs(precision.guard_crops(facts.get("crop_preset") or "BP4D"), facts["crop_size"])
    guards = [precision.probability_guard(reference, candidate, inputs, "int8", "onnxruntime")]
    if args.guard_data:
        guards.append(precision.f1_guard(reference, candidate, args.guard_data, "int8", "onnxruntime",
                                         dataset=facts.get("dataset") or "SYNTH",
                                         fold=args.guard_fold or facts.get("fold") or 1, crop_size=facts["crop_size"]))
    if not all(g["passed"] for g in guards):
        failed = report["path"] + ".failed"
        os.replace(report["path"], failed)
        report["path"], report["failed"] = failed, True
    else:  # demo.py and provenance read them from the file
        precision.record_guards(report["path"], guards)
    return report, guards


def int8_line(report: dict) -> str:
    return (f"wrote {report['path']} ({report['bytes'] / 1e6:.1f} MB, ONNX Runtime static int8, QDQ, per-channel "
            f"weights, {report['method']} calibration on {report['calibration_faces']} face crops; "
            f"{report['seconds']:.1f} s)")


def summary_line(report: dict, facts: dict, notes: Sequence[str] = ()) -> str:
    size = report["bytes"] / 1e6
    what = (f"{facts.get('arc')} stage {facts.get('stage')} {facts.get('num_classes')} AUs"
            + (" OpenGraphAU" if facts.get("variant") == "opengraphau" else ""))
    batch = "B" if report["batch_dynamic"] else "1"
    diffs = ", ".join(
        f"{name} max {'abs' if name == 'probs' else 'rel'} diff {value:.2g}"
        for name, value in report["max_diff"].items())
    batches = " and ".join(str(b) for b in report["batches"])
    line = (f"wrote {report['path']} ({size:.1f} MB, opset {report['opset']}, {what}, input images "
            f"({batch}, 3, {report['crop_size']}, {report['crop_size']}) -> {', '.join(report['outputs'])}); "
            f"ONNX Runtime vs PyTorch at batch {batches}: {diffs}; export {report['export_s']:.1f} s, "
            f"verify {report['verify_s']:.1f} s")
    for name in report.get("accepted_by_fp64", []):
        errors = [e[name] for e in report["fp64"].values()]
        notes = [f"{name} beyond 1e-4 of PyTorch but as close to a float64 run as PyTorch's float32 result "
                 f"(ONNX Runtime {max(e['onnxruntime'] for e in errors):.2g}, PyTorch "
                 f"{max(e['pytorch'] for e in errors):.2g})", *notes]
    return line + "".join(f"; {note}" for note in notes)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What can be checked before the checkpoint is read and the export (minutes) runs: the flags'
    ranges, the precision, the input files and a writable output folder."""
    from megraphau.inference.precision import unsupported_reason
    from megraphau.model.onnx_export import MIN_OPSET  # torch: not for --help

    if args.crop_size is not None and not 32 <= args.crop_size <= MAX_CROP_SIZE:
        parser.error(f"--crop-size must be in 32..{MAX_CROP_SIZE} pixels, got {args.crop_size}")
    if args.opset is not None and args.opset < MIN_OPSET:
        parser.error(f"--opset must be {MIN_OPSET} or newer (the dynamo exporter's), got {args.opset}")
    if args.guard_fold is not None and args.guard_fold < 1:
        parser.error(f"--guard-fold must be at least 1, got {args.guard_fold}")
    reason = unsupported_reason("onnxruntime", args.precision)
    if reason is not None:
        raise UserError(f"--precision {args.precision}: {reason}")
    resume = Path(args.resume)
    if not resume.is_file():
        raise UserError(f"--resume {resume}: " + ("is a folder, not a checkpoint file" if resume.is_dir()
                                                  else "checkpoint not found"))
    output = Path(args.output)
    if output.is_dir():
        raise UserError(f"--output {output} is a folder; name the .onnx file to write")
    check_writable_folder(output.parent, "folder of --output")


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """The command line through the project's front door (errors.run_cli): 0, 2 (a user error:
    one line, also an int8 file that fails its guard), 1 with a traceback (a bug)."""
    return run_cli(run, args)


def run(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    parser = one_line_errors(get_args_parser())
    if not isinstance(args, argparse.Namespace):
        args = parser.parse_args(args)
    check_args(parser, args)
    report, facts, notes = run_export(args)
    print(summary_line(report, facts, notes))
    if args.precision != "int8":
        return 0
    from megraphau.inference.precision import guard_line

    int8, guards = run_int8(args, facts)
    print(int8_line(int8))
    for guard in guards:
        print(guard_line(guard))
    if int8.get("failed"):
        print(f"error: the int8 file fails its accuracy guard (left as {int8['path']}); the float32 file is "
              f"{args.output}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
