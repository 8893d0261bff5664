"""What AU detection on files writes, named after the input's relative path.

Outputs in --output: predictions.csv (one row per face, or one no_face row per image/frame;
track_id: in videos the person the face belongs to (tracking.FaceTrackIds: the same id from
frame to frame; a face that leaves and comes back later gets a new one), empty for images;
--openface-columns: OpenFace's column names), predictions.jsonl (one JSON object per
image/frame), predictions.json (settings, every result, errors, summary), and annotated/
(images, or one .mp4/.avi per video). Rows are flushed to predictions.csv and .jsonl after every
batch, so an interrupted or killed run keeps the rows so far; predictions.json is completed at
the end ("complete": true). For a stage-2 ME-GraphAU model every face in predictions.json also
carries its predicted AU-pair relations from the edge logits ("pair_probs": P(AU i and AU j
active) and P(AU i without AU j), N rows of N values in au_names' order). With --graph,
graphs/{file}[_frame{n}]_face{k}.png draws each face's AU graph: nodes coloured by AU
probability, edges by the predicted P(both); stage-1 and OpenGraphAU models have no edge logits
and their graphs show the nodes only (OpenGraphAU: its 27 main AUs).

ResultWriter writes the three prediction files; save_crops (--save-crops) each face's 256x256
crop as {file}[_frame{n}]_face{k}.png; save_graphs (--graph) its AU graph picture
(plots.draw_au_graph); AnnotatedVideo and annotated_path the annotated outputs.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import sys
import textwrap
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from megraphau.analysis import plots
from megraphau.engine import run_folder
from megraphau.inference.detector import AUDetector, FaceResult
from megraphau.inference.drawing import letterbox
from megraphau.inference.imagefiles import display_name, opencv_path, write_image
from megraphau.inference.inputs import DemoError
from megraphau.model.facts import OPENGRAPHAU_NUM_MAIN as OPENGRAPHAU_MAIN_AUS

__all__ = ["OPENFACE_HELP", "PAIR_PROBS_NOTE", "AnnotatedVideo", "ResultWriter", "annotated_path", "claim_output",
           "compact_json", "graph_title", "openface_au_name", "save_crops", "save_graphs"]

#: what --openface-columns writes (demo.py's help text)
OPENFACE_HELP = ("write predictions.csv with OpenFace's column names, for tools that read OpenFace "
                 "output: frame (from 1), face_id (videos: the person's track id, as OpenFace's; "
                 "images: the face's place, largest first), timestamp (s), confidence (MTCNN's face "
                 "probability), success (0: no face, then zeros), AU01_c ... (0/1 presence, OpenFace's "
                 "_c; OpenGraphAU's left/right AUs as AUL01_c, AUR01_c ...), AU01_p ... (our "
                 "occurrence probabilities; OpenFace's _r intensities are not predicted, so there "
                 "are no _r columns), then file and the face box box_x, box_y, box_w, box_h")


def openface_au_name(name: str) -> str:
    """An AU name the way OpenFace writes it: AU1 -> AU01, AUL1 -> AUL01 (OpenGraphAU's left and
    right AUs keep their side letter before the zero-padded number); other names unchanged."""
    match = re.fullmatch(r"AU([LR]?)(\d+)", name)
    return f"AU{match[1]}{int(match[2]):02d}" if match else name


def claim_output(out_dir: Path, overwrite: bool, inputs=(), resume: bool = False):
    """Lock the demo's output folder for this run, like a training run's folder
    (run_folder.claim, kind 'demo'): a second demo into it at the same time is refused naming the
    first; an earlier demo's predictions are kept unless `overwrite`. resume: the run continues
    the folder's earlier run (--engine ray/local with its manifest.jsonl, scale.py): locked, its
    files kept whatever `overwrite` says (kind 'resume'). Returns the held lock (release() it at
    the end; the process's end releases it anyway). run_folder.RunFolderError (one line) when the
    folder cannot be used."""
    command = display_name(shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))  # names need not be UTF-8
    try:
        return run_folder.claim(out_dir, "resume" if resume else "demo", overwrite, inputs=inputs, command=command)
    except run_folder.RunFolderError as err:  # its words name the training scripts' --output-dir
        raise run_folder.RunFolderError(str(err).replace("--exp-name or --output-dir", "--output")
                                        .replace("--output-dir", "--output")) from None


class ResultWriter:
    """predictions.csv (one row per face, or per face-less image/frame), predictions.jsonl (one
    JSON object per image/frame) and predictions.json (the run's settings, AU names, every result
    as in predictions.jsonl, errors and summary).

    Rows are written as they are made: flush() (the runner calls it after every batch) writes every
    row added since, each file in one piece, so a run that is killed leaves complete rows of a
    prefix of the frames in predictions.csv and predictions.jsonl. Results are not kept in
    memory (it does not grow with a video's length): predictions.json is written at the start
    with "complete": false and no results, and close() writes it again with the results copied
    from predictions.jsonl.

    openface: OpenFace's column names (frame, face_id, timestamp, confidence, success, AU01_c ...,
    AU01_p ..., file, box_x ...: OPENFACE_HELP) instead of this project's.
    stem: the files' name ({stem}.csv, {stem}.jsonl, {stem}.json); summary_json: False writes
    no .json (the per-input parts of scale.py, merged into one predictions.json at the end).
    """

    def __init__(self, out_dir: Path, detector: AUDetector, args_summary: dict, openface: bool = False,
                 stem: str = "predictions", summary_json: bool = True):
        self.out_dir = out_dir
        self.names = detector.au_names
        self.threshold = detector.threshold
        self.openface = openface
        self.stem, self.summary_json = stem, summary_json
        self.csv_path, self.jsonl_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.jsonl"
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        # open for the whole run: rows are appended as they are made (close() ends them)
        self.csv_file = open(self.csv_path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self.jsonl_file = open(self.jsonl_path, "w", encoding="utf-8")  # noqa: SIM115
        self._csv_text, self._jsonl_text = io.StringIO(), io.StringIO()
        self.csv = csv.writer(self._csv_text)
        if openface:
            codes = [openface_au_name(n) for n in self.names]
            self.csv.writerow(["frame", "face_id", "timestamp", "confidence", "success"]
                              + [f"{c}_c" for c in codes] + [f"{c}_p" for c in codes]
                              + ["file", "box_x", "box_y", "box_w", "box_h"])
        else:
            self.csv.writerow(["file", "frame", "face", "track_id", "x", "y", "w", "h", "no_face"]
                              + [c for n in self.names for c in (f"{n}_prob", n)])
        self.json = {**args_summary, "au_names": list(self.names),
                     "au_descriptions": detector.au_descriptions, "threshold": detector.threshold}
        if getattr(detector, "has_edges", False):
            self.json["pair_probs_note"] = PAIR_PROBS_NOTE
        self.json.update(csv_columns="openface" if openface else "demo", results_file="predictions.jsonl",
                         complete=False, errors=[])
        self.n_items = self.n_faces = self.n_no_face = 0
        self.echo_errors = True  #: error() prints the line (the per-input parts of scale.py: the driver does)
        self.model_name = display_name(getattr(detector, "checkpoint", None) or "the model")
        self._non_finite_said = False
        self.flush()
        if summary_json:
            self._write_json(with_results=False)

    def finite_faces(self, file: str, frame: Optional[int], faces: Sequence[FaceResult]) -> Optional[list]:
        """The faces whose AU probabilities are all finite. Each other face is an error (NaN or
        Inf probabilities come from non-finite weights, or an input the model overflows on):
        listed in predictions.json's errors, never drawn or written as a result; the first one
        is printed, naming the model file. None when the image or frame had faces and none is
        finite (it is an error, not an image without a face)."""
        finite = [bool(np.isfinite(np.asarray(f.probs, np.float64)).all()) for f in faces]
        if all(finite):
            return list(faces)
        where = display_name(file) + ("" if frame is None else f" frame {frame}")
        for face, ok in zip(faces, finite):
            if ok:
                continue
            message = (f"{self.model_name}: the model's AU probabilities for {where} face {face.index} are not "
                       f"finite (NaN or Inf): its weights are not finite, or this input overflows it; the face "
                       f"is left out of the outputs")
            self.json["errors"].append({"file": display_name(file), "frame": frame, "face": face.index,
                                        "error": message})
            if self.echo_errors and not self._non_finite_said:  # one line, not one per face: the rest are listed
                self._non_finite_said = True
                print(f"error: {message} (every such face is listed in predictions.json's errors)",
                      file=sys.stderr, flush=True)
        return [face for face, ok in zip(faces, finite) if ok] or None

    def add(self, file: str, frame: Optional[int], faces: Sequence[FaceResult],
            graphs: Optional[dict] = None, timestamp: Optional[float] = None) -> None:
        """One image (frame None) or video frame and its faces; graphs: {face index: path of its
        --graph picture, relative to the output folder}; timestamp: the frame's time in seconds
        (OpenFace columns). File names that are not UTF-8 are written with \\xNN escapes
        (imagefiles.display_name), so the files stay valid UTF-8."""
        file = display_name(file)
        self.n_items += 1
        if not faces:
            self.n_no_face += 1
        if self.openface:
            self._add_openface(file, frame, faces, timestamp)
        else:
            frame_text = "" if frame is None else frame
            if not faces:
                self.csv.writerow([file, frame_text, "", "", "", "", "", "", 1] + [""] * (2 * len(self.names)))
            for face in faces:
                values = [v for p, a in zip(face.probs, face.labels) for v in (f"{p:.6f}", int(a))]
                track = "" if face.track_id is None else face.track_id
                self.csv.writerow([file, frame_text, face.index, track, *face.box, 0] + values)
        self.n_faces += len(faces)
        entries = [f.as_dict(self.names) for f in faces]
        for face, entry in zip(faces, entries):
            if graphs and face.index in graphs:
                entry["graph"] = display_name(graphs[face.index])
        result = {"file": file, "frame": frame, "no_face": not faces, "faces": entries}
        self._jsonl_text.write(json.dumps(result) + "\n")

    def _add_openface(self, file: str, frame: Optional[int], faces: Sequence[FaceResult],
                      timestamp: Optional[float]) -> None:
        # OpenFace numbers frames from 1 (images: their place in the listing) and writes zeros
        # where no face was found (success 0)
        number = (frame if frame is not None else self.n_items - 1) + 1
        stamp = f"{timestamp if timestamp is not None else 0.0:.3f}"
        if not faces:
            self.csv.writerow([number, 0, stamp, 0, 0] + [0] * len(self.names) + ["0.000000"] * len(self.names)
                              + [file, "", "", "", ""])
        for face in faces:
            confidence = 1.0 if face.score is None else face.score  # --no-detect: the image is the face
            face_id = face.index if face.track_id is None else face.track_id  # OpenFace's: the person in videos
            self.csv.writerow([number, face_id, stamp, f"{confidence:.4f}", 1]
                              + [int(a) for a in face.labels] + [f"{p:.6f}" for p in face.probs]
                              + [file, *face.box])

    def flush(self) -> None:
        """Write the rows added since the last flush, each file in one write, and flush them."""
        for text, handle in ((self._csv_text, self.csv_file), (self._jsonl_text, self.jsonl_file)):
            data = text.getvalue()
            if data:
                handle.write(data)
                handle.flush()
                text.seek(0)
                text.truncate()

    def error(self, file: str, message: str, echo: Optional[bool] = None) -> None:
        """Record an input that failed; echo (default: the writer's echo_errors) prints its one
        line to stderr too. Names that are not UTF-8 are kept as \\xNN (imagefiles.display_name)."""
        file, message = display_name(file), display_name(message)
        if self.echo_errors if echo is None else echo:
            print(f"error: {message}", file=sys.stderr, flush=True)
        self.json["errors"].append({"file": file, "error": message})

    def merge_part(self, csv_path: Path, jsonl_path: Path, items: int, faces: int, no_face: int,
                   image: bool = False) -> None:
        """Append the rows of another writer's files (a per-input part of scale.py, written with
        the same settings) as if they were added here, reading them line by line (memory does
        not grow with their length). image: the part is one image, whose OpenFace frame number
        is its place among the items (renumbered here, as add() numbers it)."""
        self.flush()
        if csv_path.is_file():
            with open(csv_path, newline="", encoding="utf-8") as part:
                rows = csv.reader(part)
                next(rows, None)  # the part's header
                for row in rows:
                    if self.openface and image:
                        row[0] = str(self.n_items + 1)
                    self.csv.writerow(row)
                    if self._csv_text.tell() > 1 << 20:
                        self.flush()
        if jsonl_path.is_file():
            with open(jsonl_path, encoding="utf-8") as part:
                for line in part:
                    self._jsonl_text.write(line)
                    if self._jsonl_text.tell() > 1 << 20:
                        self.flush()
        self.n_items += items
        self.n_faces += faces
        self.n_no_face += no_face
        self.flush()

    def _write_json(self, with_results: bool) -> None:
        """predictions.json (through a temporary file); with_results: "results" copied one by one
        from predictions.jsonl, in compact_json's layout."""
        placeholder = "@@results@@"
        meta = {k: v for k, v in self.json.items() if k not in ("errors", "summary")}
        if with_results:
            meta["results"] = placeholder
        meta.update((k, self.json[k]) for k in ("errors", "summary") if k in self.json)
        head, _, tail = compact_json(meta).partition(f'"{placeholder}"')
        tmp = self.out_dir / f".{self.stem}.json.tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(head)
            if with_results:
                out.write("[")
                count = 0
                with open(self.jsonl_path, encoding="utf-8") as lines:
                    for line in lines:
                        item = textwrap.indent(compact_json(json.loads(line)), "  ")
                        out.write(("\n" if count == 0 else ",\n") + item)
                        count += 1
                out.write("\n ]" if count else "]")
            out.write(tail)
        os.replace(tmp, self.out_dir / f"{self.stem}.json")

    def close(self, complete: bool = True) -> None:
        """Flush and close the files, and write predictions.json with every result ("complete":
        False for a run that was interrupted)."""
        self.flush()
        self.csv_file.close()
        self.jsonl_file.close()
        self.json["complete"] = bool(complete)
        self.json["summary"] = {"items": self.n_items, "faces": self.n_faces,
                                "no_face": self.n_no_face, "errors": len(self.json["errors"])}
        if self.summary_json:
            self._write_json(with_results=True)


PAIR_PROBS_NOTE = ("each face's pair_probs: the stage-2 edge logits' softmax as N x N matrices, row i and "
                   "column j = au_names[i], au_names[j]: p_both = P(AU i and AU j active), p_i_without_j = "
                   "P(AU i active, AU j not); P(AU j without AU i) is p_i_without_j transposed")

_NUMBER_LIST = re.compile(r"\[\s+([-+0-9.eE,\snul]*?)\s*\]")  # a list of numbers / nulls, split over lines


def compact_json(obj) -> str:
    """json.dumps(obj, indent=1) with each list of plain numbers on one line (a box, a landmark,
    a matrix row), so the per-face matrices stay one line per row."""
    text = json.dumps(obj, indent=1)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)


def annotated_path(out_dir: Path, rel: Path) -> Path:
    """annotated/{rel} under out_dir (its folder made), as .png where OpenCV cannot write rel's format."""
    path = out_dir / "annotated" / rel
    if path.suffix.lower() not in {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}:
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def open_video_writer(path_stem: Path, fps: float, size: tuple[int, int]) -> tuple[cv2.VideoWriter, Path]:
    """An mp4v .mp4 writer, or MJPG .avi where this OpenCV build cannot write mp4."""
    for suffix, codec in ((".mp4", "mp4v"), (".avi", "MJPG")):
        path = path_stem.with_suffix(suffix)
        try:
            name = opencv_path(path)
        except ValueError as err:  # imagefiles.ImageFileError: a name OpenCV cannot open
            raise DemoError(str(err)) from None
        writer = cv2.VideoWriter(name, cv2.VideoWriter_fourcc(*codec), fps, size)
        if writer.isOpened():
            return writer, path
        writer.release()
    raise DemoError(f"cannot write an annotated video at {path_stem}.mp4 / .avi (no usable codec)")


class AnnotatedVideo:
    """An annotated video written frame by frame: the first frame fixes the size (its sides made
    even, which keeps every codec happy) and opens {path_stem}.mp4 (or .avi, open_video_writer);
    every frame is letterboxed into that size. `path` is None until a frame was written."""

    def __init__(self, path_stem: Path, fps: float):
        self.path_stem, self.fps = path_stem, fps
        self.path: Optional[Path] = None
        self._writer: Optional[cv2.VideoWriter] = None
        self._size: Optional[tuple[int, int]] = None

    def write(self, drawn: np.ndarray) -> None:
        if self._writer is None:
            self._size = (drawn.shape[1] + drawn.shape[1] % 2, drawn.shape[0] + drawn.shape[0] % 2)
            self.path_stem.parent.mkdir(parents=True, exist_ok=True)
            self._writer, self.path = open_video_writer(self.path_stem, self.fps, self._size)
        self._writer.write(letterbox(drawn, self._size))

    def release(self) -> None:
        if self._writer is not None:
            self._writer.release()


def _face_stem(rel: Path, frame: Optional[int]) -> str:
    """{file}[_frame{frame}]: the input's relative path without its suffix (crop and graph names)."""
    return rel.with_suffix("").as_posix() + ("" if frame is None else f"_frame{frame}")


def save_crops(crops_dir: Optional[Path], rel: Path, frame: Optional[int], faces: Sequence[FaceResult]) -> None:
    """--save-crops: each face's 256x256 crop exactly as fed to the model's transform, named after
    its CSV row: {file}[_frame{frame}]_face{face}.png under the input's relative path."""
    if crops_dir is None:
        return
    stem = _face_stem(rel, frame)
    for face in faces:
        path = crops_dir / f"{stem}_face{face.index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(path, face.crop)  # any file name (imagefiles)


def graph_title(detector: AUDetector, name: str) -> str:
    """The --graph picture's title: the face, and what the model's graph can show."""
    if detector.has_edges:
        return f"{name}: AU relations (stage 2)"
    if detector.variant == "opengraphau":
        return f"{name}: OpenGraphAU, {OPENGRAPHAU_MAIN_AUS} main AUs, nodes only (the model has no edge logits)"
    return f"{name}: stage-1 model, nodes only (no edge logits)"


def save_graphs(graphs_dir: Optional[Path], out_dir: Path, rel: Path, frame: Optional[int],
                faces: Sequence[FaceResult], detector: AUDetector) -> dict:
    """--graph: each face's AU graph as graphs/{file}[_frame{frame}]_face{face}.png (named like
    --save-crops' files): plots.draw_au_graph with the AU probabilities as nodes and, for a
    stage-2 ME-GraphAU model, the predicted P(both) of every AU pair as edges; an OpenGraphAU
    model's 27 main AUs, a stage-1 model's N AUs as nodes only. Returns {face index: path
    relative to out_dir} (for predictions.json)."""
    if graphs_dir is None or not faces:
        return {}
    stem = _face_stem(rel, frame)
    n = OPENGRAPHAU_MAIN_AUS if detector.variant == "opengraphau" else len(detector.au_names)
    written = {}
    for face in faces:
        path = graphs_dir / f"{stem}_face{face.index}.png"
        pairs = face.pair_probs
        name = display_name(rel.as_posix()) + ("" if frame is None else f" frame {frame}") + f" face {face.index}"
        plots.draw_au_graph(detector.au_names[:n], face.probs[:n], None if pairs is None else pairs["p_both"], path,
                            title=graph_title(detector, name), threshold=detector.threshold, write_numbers=False)
        written[face.index] = path.relative_to(out_dir).as_posix() if path.is_relative_to(out_dir) else str(path)
    return written
