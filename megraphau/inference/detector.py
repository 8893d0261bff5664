"""The Python API for AU detection on images and video frames with a ME-GraphAU / OpenGraphAU
checkpoint (Luo et al., IJCAI-ECAI 2022):

    from megraphau.inference.detector import AUDetector
    detector = AUDetector("MEFARG_resnet50_BP4D_fold1.pth")      # or this project's best.pth
    faces = detector.predict_image(image_bgr)                    # all faces, largest first
    faces[0].probs, faces[0].labels, detector.au_names
    faces[0].pair_probs["p_both"]    # stage-2 ME-GraphAU: (N, N) P(AU i and AU j), else None

The checkpoint decides the model (model.load_model) and the AU set: a project checkpoint
carries its dataset's AU names and descriptions; a released file's AU count picks them
(12 -> BP4D, 8 -> DISFA, 41 -> OpenGraphAU), or `dataset=` names a config. An exported .onnx
file (tool/export_onnx.py) runs on ONNX Runtime instead of PyTorch, with the facts (AU names,
crop preset and size, stage, backbone) from its metadata:

    detector = AUDetector("me_graphau.onnx", threads=2)          # same outputs as the .pth

Faces are found with MTCNN (faces.py) and cropped exactly like the training crops: the five
landmarks aligned to the crop preset the model was trained for (a project checkpoint records it;
12 AUs: BP4D, 8: DISFA, 41: OpenGraphAU), 256x256; then the test transform (resize, centre crop,
ImageNet normalisation) at the checkpoint's crop size, and classification in batches. Videos:
pipeline.VideoPipeline runs detection and the model in their own threads (demo.py uses it).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
import torch

from megraphau.data.dataset import IMAGENET_MEAN, IMAGENET_STD, build_transform, load_dataset_config, resize_for_crop
from megraphau.errors import UserError
from megraphau.inference import precision as P
from megraphau.model.facts import AU_SET_FOR_NUM_CLASSES, has_edge_logits, variant_for

log = logging.getLogger(__name__)


class InferenceError(UserError, RuntimeError):
    """A problem with the detector's checkpoint, options or input; the message names the file."""


@dataclass
class FaceResult:
    """One face: box (x, y, w, h) in the input image, probabilities (N,) and 0/1 labels (N,);
    for a stage-2 ME-GraphAU model also its edge logits (N*N, 4): edge i*N + j, class
    2*a_i + a_j (see pair_probs)."""
    index: int
    box: tuple
    probs: np.ndarray
    labels: np.ndarray
    score: Optional[float] = None
    landmarks: Optional[np.ndarray] = None  # (5, 2) image pixels: eyes, nose, mouth corners
    crop: Optional[np.ndarray] = None  # the 256x256 BGR crop fed to the model's transform
    edge_logits: Optional[np.ndarray] = None  # (N*N, 4), stage-2 ME-GraphAU models only
    track_id: Optional[int] = None  # videos: the person (tracking.FaceTrackIds); images: None

    @property
    def pair_probs(self) -> Optional[dict]:
        """The predicted pair relations, relations.pair_probabilities of the edge logits: (N, N)
        matrices p_both = P(AU i and AU j active), p_i_without_j, p_j_without_i, p_neither, row
        i and column j in the AU list's order; None without edge logits (stage 1, OpenGraphAU)."""
        if self.edge_logits is None:
            return None
        from megraphau.analysis.relations import pair_probabilities

        return pair_probabilities(self.edge_logits)

    def as_dict(self, au_names: Sequence[str]) -> dict:
        """The face as JSON; with edge logits also "pair_probs": {"p_both": rows, "p_i_without_j":
        rows}, N lists of N values rounded to 4 decimals, rows and columns in au_names' order."""
        out = {"face": self.index, "track_id": self.track_id, "box": [int(v) for v in self.box],
               "detector_score": None if self.score is None else round(float(self.score), 6),
               "probs": {n: round(float(p), 6) for n, p in zip(au_names, self.probs)},
               "active": [n for n, a in zip(au_names, self.labels) if a]}
        if self.landmarks is not None:
            out["landmarks"] = [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks]
        pairs = self.pair_probs
        if pairs is not None:
            out["pair_probs"] = {key: np.round(pairs[key], 4).tolist() for key in ("p_both", "p_i_without_j")}
        return out


def load_au_config(name_or_path: str) -> dict:
    """A dataset config (megraphau/configs/{name}.yaml or a .yaml path) naming AUs; InferenceError if bad."""
    try:
        return load_dataset_config(name_or_path)
    except ValueError as err:
        raise InferenceError(str(err)) from None


def neighbor_num_for(num_classes: int) -> int:
    """The stage-1 graph's K of the known AU set of this size (BP4D 4, DISFA 3), else 4."""
    name = AU_SET_FOR_NUM_CLASSES.get(num_classes)
    return int(load_au_config(name)["neighbor_num"]) if name else 4


def resolve_au_set(facts: dict, dataset: Optional[str] = None) -> tuple[list, Optional[list]]:
    """(au_names, au_descriptions) of a model: `dataset` when given (it must have as many AUs,
    and the same names when the checkpoint carries names for its outputs), else the names the
    checkpoint carries, else the known set of its AU count. The weights decide the count: a file
    whose stored names are not one per output is refused (its names belong to another model),
    unless `dataset` names the outputs."""
    n, source = facts["num_classes"], facts.get("source")
    stored = facts.get("au_names")
    if stored and len(stored) != n and not dataset:
        raise InferenceError(f"{source} names {len(stored)} AUs ({' '.join(map(str, stored))}) but its weights "
                             f"predict {n}: the names do not belong to these weights; pass --dataset CONFIG "
                             f"naming its {n} AUs")
    if dataset:
        cfg = load_au_config(dataset)
        if len(cfg["au_names"]) != n:
            raise InferenceError(f"--dataset {cfg.get('config_path', cfg.get('name'))} names "
                                 f"{len(cfg['au_names'])} AUs but {source} predicts {n}")
        if stored and len(stored) == n and list(stored) != list(cfg["au_names"]):
            raise InferenceError(f"--dataset {cfg.get('name')} names the AUs {list(cfg['au_names'])} but {source} "
                                 f"stores {list(stored)}; drop --dataset (the file decides)")
        return list(cfg["au_names"]), cfg.get("au_descriptions")
    if stored:
        descriptions = facts.get("au_descriptions")
        if descriptions is not None and len(descriptions) != n:
            descriptions = None  # not one per AU: not shown
        if descriptions is None and n in AU_SET_FOR_NUM_CLASSES:  # older project files: names only
            known = load_au_config(AU_SET_FOR_NUM_CLASSES[n])
            descriptions = known.get("au_descriptions") if list(known["au_names"]) == list(stored) else None
        return list(stored), descriptions
    if n in AU_SET_FOR_NUM_CLASSES:
        cfg = load_au_config(AU_SET_FOR_NUM_CLASSES[n])
        return list(cfg["au_names"]), cfg.get("au_descriptions")
    known = ", ".join(f"{k} ({v})" for k, v in AU_SET_FOR_NUM_CLASSES.items())
    raise InferenceError(f"{source} predicts {n} AUs, which matches no known AU set ({known}); pass "
                         f"--dataset CONFIG whose au_names name them")


def _normalisation_table() -> np.ndarray:
    """(3, 256) float32: ImageNet-normalised value of each uint8 level per RGB channel, computed
    with the test transform's own float32 operations (x * (1/255) - mean) / std, so a table
    look-up gives bit-identical model inputs."""
    levels = torch.arange(256, dtype=torch.float32).expand(3, 256).clone()
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1)
    return levels.mul_(1.0 / 255).sub_(mean).div_(std).numpy()


_NORMALISE = _normalisation_table()


class AUDetector:
    """Face detection + AU recognition with one checkpoint.

    checkpoint: a release-style or project checkpoint, an ONNX file exported by
        tool/export_onnx.py (run by ONNX Runtime; its metadata gives the AU names, crop preset
        and size, stage and backbone), or None with `arc`, `stage` and `dataset` (a randomly
        initialised model, for timing only).
    arc / stage / metric: checked against the checkpoint (a contradiction is an error naming
        both); None: taken from the checkpoint.
    dataset: a dataset config name/path whose au_names name the outputs (needed when the AU
        count matches no known set and the file does not name them).
    detect: False treats every image as one face crop (no detection).
    preset: the crop geometry (faces.CROP_PRESETS); default: the checkpoint's, else the one of
        its AU count (12: BP4D, 8: DISFA, 41: OpenGraphAU).
    redetect_every: videos (track()): a full face detection every this many frames, MTCNN's
        landmark stage alone on the previous faces in between.
    threads: CPU threads of the AU model (torch.set_num_threads in the thread that runs it, or
        ONNX Runtime's intra-op threads); None: leave torch's setting, ONNX Runtime's default.
    detect_threads: torch threads of MTCNN (faces.FaceDetector; 1 is fastest on small CPUs).
    precision: "fp32", "bf16" or "int8" (inference/precision.py); None: the file's (fp32 for a
        .pth, int8 for a .int8.onnx). bf16: a PyTorch model runs under bfloat16 autocast (CPU or
        CUDA): 2.5x faster on CPUs with AMX (Xeon 4th generation and later) and on recent GPUs,
        probabilities within ~2e-3 of float32 (so AUs within that of the threshold may flip);
        slower on CPUs without bfloat16 units. int8: ONNX Runtime static int8; a float32 .onnx is
        quantised on first use and cached beside it (model.onnx -> model.int8.onnx, its accuracy
        guard run, logged and recorded), a .int8.onnx runs as it is; a .pth is refused (export it
        with tool/export_onnx.py --precision int8). precision_record: the provenance record.
    bf16: deprecated alias of precision="bf16".
    compile: torch.compile the PyTorch model (compiled on the first batch; worth it on a GPU for
        long videos, not measured on this project's CPU machine).
    detect_size: full face detections run on a copy of the frame at most this many pixels on its
        longer side (faces.FaceDetector; landmarks are tracked at full resolution).
    """

    def __init__(self, checkpoint: Optional[str | Path], arc: Optional[str] = None,
                 stage: Optional[int] = None, device: str | torch.device = "cpu",
                 dataset: Optional[str] = None, threshold: float = 0.5, detect: bool = True,
                 max_faces: Optional[int] = None, batch_size: int = 16, metric: Optional[str] = None,
                 preset: Optional[str] = None, redetect_every: int = 10, threads: Optional[int] = None,
                 detect_threads: Optional[int] = 1, detect_size: Optional[int] = 640, bf16: bool = False,
                 precision: Optional[str] = None, compile: bool = False):
        from megraphau.inference import faces
        from megraphau.model import build_model, load_model
        from megraphau.model.onnx_export import is_onnx_file

        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise InferenceError(f"device {device}: CUDA is not available here (use cpu)")
        self.threshold = float(threshold)
        self.max_faces = max_faces
        self.batch_size = max(1, int(batch_size))
        self.threads = None if threads is None else max(1, int(threads))
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.backend = "pytorch"
        if bf16 and precision not in (None, "bf16"):
            raise InferenceError(f"bf16=True (deprecated: precision='bf16') contradicts precision={precision!r}")
        precision = "bf16" if bf16 else precision
        if precision is not None and precision not in P.PRECISIONS:
            raise InferenceError(f"precision {precision!r} is not one of {', '.join(P.PRECISIONS)}")
        self.precision_guards: list = []  # the int8 file's accuracy guards (provenance)
        if checkpoint is not None and Path(checkpoint).is_file() and is_onnx_file(checkpoint):
            self.model, self.facts = self._load_onnx(Path(checkpoint), arc, stage, metric)
            precision = self._onnx_precision(precision, arc, stage, metric)
        elif checkpoint is not None:
            neighbor_num = (lambda n: int(load_au_config(dataset)["neighbor_num"])) if dataset else neighbor_num_for
            loaded = load_model(checkpoint, arc=arc, stage=stage, metric=metric, neighbor_num=neighbor_num)
            self.model, self.facts = loaded.model, loaded.facts
        else:
            if dataset is None or arc is None or stage is None:
                raise InferenceError("without a checkpoint, give arc, stage and dataset (random weights)")
            cfg = load_au_config(dataset)
            n = int(cfg["num_classes"])
            variant = cfg.get("variant") or variant_for(n)
            self.model = build_model(int(stage), arc, n, int(cfg["neighbor_num"]), metric or "dots",
                                     pretrained=False, variant=variant)
            self.facts = {"arc": arc, "stage": int(stage), "num_classes": n, "variant": variant,
                          "crop_size": None, "crop_preset": cfg.get("crop_preset"), "source": None}
        if self.backend == "pytorch" and precision == "int8":
            raise InferenceError(f"{checkpoint}: int8 runs on ONNX Runtime: export it with tool/export_onnx.py "
                                 f"--precision int8 and pass the .int8.onnx, or pass its .onnx with int8 "
                                 f"(quantised on first use)")
        self.precision = precision or "fp32"
        self.au_names, self.au_descriptions = resolve_au_set(self.facts, dataset)
        self.model.to(self.device).eval()
        # PyTorch: channels-last convolutions (oneDNN's native layout on the CPU, 5-20% faster here;
        # the tensor cores' on a GPU); the outputs move by float32 rounding only (~1e-7)
        self._channels_last = self.backend == "pytorch"
        if self._channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._pinned = threading.local()  # CUDA: each model worker's page-locked input buffer
        if self.device.type == "cuda" and self.backend == "pytorch":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
        self.compiled = bool(compile and self.backend == "pytorch")
        if self.compiled:
            self.model = torch.compile(self.model)
        self.arc, self.stage, self.variant = self.facts["arc"], int(self.facts["stage"]), self.facts["variant"]
        self.crop_size = int(self.facts.get("crop_size") or 224)  # the release trained at 224
        self.transform = build_transform(False, crop_size=self.crop_size)
        # the test transform of a 256 crop is a centre window when it resizes to 256 (crop 224)
        self._window = (256 - self.crop_size) // 2 if resize_for_crop(self.crop_size) == 256 else None
        self.crop_preset = preset or self.facts.get("crop_preset") or faces.preset_for(len(self.au_names))
        if self.crop_preset not in faces.CROP_PRESETS:
            raise InferenceError(f"crop preset {self.crop_preset!r} is not one of {', '.join(faces.CROP_PRESETS)}")
        # MTCNN follows the model onto a GPU: on one CPU core its detections and tracking (about 10 ms
        # per frame) would cap a GPU run near 100 frames/s
        self.face_detector = faces.FaceDetector(device=str(self.device) if self.device.type == "cuda" else "cpu",
                                                threads=detect_threads, detect_size=detect_size) if detect else None
        self.tracker = faces.FaceTracker(self.face_detector, redetect_every=redetect_every) if detect else None

    @property
    def bf16(self) -> bool:
        """The model runs under bfloat16 autocast (precision "bf16")."""
        return self.precision == "bf16"

    @property
    def precision_record(self) -> dict:
        """What the outputs were computed in, for provenance.collect(precision=...)."""
        model_file = self.model.path if self.backend == "onnxruntime" else None
        return P.precision_facts(self.backend, self.precision, model_file, self.precision_guards)

    def _onnx_precision(self, precision: Optional[str], arc, stage, metric) -> str:
        """The precision of the loaded .onnx model for the one asked for (None: the file's); a
        float32 file with int8 is swapped for its cached int8 file (precision.cached_int8, made
        on first use, its guard logged)."""
        meta = self.model.metadata.get("precision") or {}
        stored = meta.get("precision", "fp32")
        path = self.model.path
        if precision is None or precision == stored:
            self.precision_guards = list(meta.get("guards") or [])
            return stored
        if precision == "bf16":
            raise InferenceError(f"{path}: bfloat16 is for PyTorch models; run the .pth with bf16 (ONNX Runtime "
                                 f"runs the exported float32 graph, or int8)")
        if stored == "int8":
            raise InferenceError(f"{path} holds an int8 model; for {precision} pass the float32 .onnx it was made from")
        try:
            out, guards, made = P.cached_int8(path, threads=self.threads)
        except P.PrecisionError as err:
            raise InferenceError(str(err)) from None
        except OSError as err:
            raise InferenceError(f"{path}: cannot write its int8 file beside it ({err.strerror or err}); make one "
                                 f"with tool/export_onnx.py --precision int8 --output DIR/model.onnx") from None
        log.info("int8: %s %s", "quantised to" if made else "using the cached", out)
        for guard in guards:
            log.info("%s", P.guard_line(guard))
        self.model, self.facts = self._load_onnx(out, arc, stage, metric)
        self.precision_guards = list(guards)
        return "int8"

    def _load_onnx(self, path: Path, arc, stage, metric) -> tuple:
        """(OnnxAUModel, facts) of an exported file; arguments that contradict its metadata are errors."""
        from megraphau.model.checkpoint import agree_with_file
        from megraphau.model.onnx_export import OnnxAUModel, OnnxModelError

        if self.device.type == "cuda":
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise InferenceError(f"{path}: this onnxruntime has no CUDA provider (pip install "
                                     f"onnxruntime-gpu, or use --device cpu)")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            # no spinning: the pool's idle threads would take the CPU from face detection and decoding
            model = OnnxAUModel(path, threads=self.threads, providers=providers,
                                session_config={"session.intra_op.allow_spinning": "0"})
        except (OnnxModelError, ImportError) as err:
            raise InferenceError(str(err)) from None
        facts = model.facts
        for key in ("arc", "stage", "num_classes"):
            if facts.get(key) is None:
                raise InferenceError(f"{path}: its metadata does not give the model's {key}; export it with "
                                     f"tool/export_onnx.py")
        agree_with_file(path, "the backbone", "--arc", arc, facts["arc"])
        agree_with_file(path, "stage", "--stage", None if stage is None else int(stage), int(facts["stage"]))
        agree_with_file(path, "the graph metric", "--metric", metric, facts.get("metric"))
        facts["variant"] = facts.get("variant") or "megraphau"
        facts["crop_size"] = model.crop_size or facts.get("crop_size")
        facts["source"] = str(path)
        if isinstance(model.input_shape[0], int):  # exported with --static-batch
            self.batch_size = min(self.batch_size, model.input_shape[0])
        self.backend = "onnxruntime"
        return model, facts

    # -- detection and cropping
    def find_faces(self, image_bgr: np.ndarray, track: bool = False) -> list:
        """faces.Face objects of an image, largest first, at most max_faces. track: the image is
        the next frame of a video (the tracker's landmark stage instead of a full detection)."""
        found = self.tracker.update(image_bgr) if track else self.face_detector.detect(image_bgr)
        return list(found)[: self.max_faces]

    def faces_and_crops(self, image_bgr: np.ndarray, track: bool = False) -> tuple[list, list]:
        """[faces.Face], [256 x 256 BGR crop] for each face, largest first (without detection:
        the whole image as one face)."""
        if self.face_detector is None:
            return [None], [image_bgr]  # the transform resizes and centre-crops
        found = self.find_faces(image_bgr, track)
        return found, self.crops(image_bgr, found)

    def crops(self, image_bgr: np.ndarray, found: Sequence) -> list:
        """The 256 x 256 BGR crop of each face (faces.align_crop with the crop preset); without
        detection (faces [None]) the whole image."""
        if self.face_detector is None:
            return [image_bgr for _ in found]
        from megraphau.inference.faces import align_crop

        return [align_crop(image_bgr, f, preset=self.crop_preset, size=256) for f in found]

    def _to_tensor(self, crop_bgr: np.ndarray) -> torch.Tensor:
        if crop_bgr.ndim == 2:
            crop_bgr = cv2.cvtColor(crop_bgr, cv2.COLOR_GRAY2BGR)
        rgb = np.ascontiguousarray(crop_bgr[:, :, 2::-1])  # BGR(A) -> RGB
        return self.transform(torch.from_numpy(rgb).permute(2, 0, 1))  # (3, crop, crop)

    def model_input(self, crop_bgr: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """A face crop (BGR uint8) -> the model's input (3, S, S) float32, exactly the test
        transform's (resize, centre crop, ImageNet normalisation). A 256x256 crop for a 224 model
        (resize 256: a no-op) takes the fast way: the centre window through a per-channel
        look-up table of the transform's own float32 values (bit-identical, ~4x faster)."""
        if self._window is not None and crop_bgr.shape == (256, 256, 3) and crop_bgr.dtype == np.uint8:
            o, s = self._window, self.crop_size
            window = crop_bgr[o:o + s, o:o + s]
            out = np.empty((3, s, s), np.float32) if out is None else out
            for c in range(3):  # RGB plane c is BGR channel 2 - c
                np.take(_NORMALISE[c], window[:, :, 2 - c], out=out[c])
            return out
        tensor = self._to_tensor(crop_bgr).numpy()
        if out is None:
            return tensor
        out[...] = tensor
        return out

    def model_inputs(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Face crops -> (len(crops), 3, S, S) float32 model inputs (model_input of each)."""
        batch = np.empty((len(crops), 3, self.crop_size, self.crop_size), np.float32)
        for i, crop in enumerate(crops):
            self.model_input(crop, batch[i])
        return batch

    @property
    def has_edges(self) -> bool:
        """Whether the model predicts AU-pair relations (stage-2 ME-GraphAU: edge logits);
        stage 1 and OpenGraphAU (both stages) give AU probabilities only."""
        return has_edge_logits(self.stage, self.variant)

    @torch.inference_mode()
    def run_model(self, inputs: np.ndarray, edges: bool = False):
        """Model inputs (B, 3, S, S) float32 (model_inputs) -> AU probabilities (B, N), one model
        call (the caller batches). With `threads`, PyTorch runs with that many threads in the
        calling thread. edges=True: (probs, edge_logits (B, N*N, 4) or None without them)."""
        n = len(self.au_names)
        if not len(inputs):
            probs, edge_logits = np.zeros((0, n), np.float32), np.zeros((0, n * n, 4), np.float32)
        elif self.backend == "onnxruntime":
            outputs = self.model.run(inputs)
            probs, edge_logits = outputs[0], outputs[1] if len(outputs) > 1 else None
        else:
            if self.threads is not None and torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)
            batch = self._to_device(inputs)
            if self._channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with P.autocast(self.precision, self.device):
                result = self.model(batch)
            probs = result[0] if isinstance(result, tuple) else result  # stage 2: (probs, edge logits)
            probs = probs.float().cpu().numpy()
            edge_logits = result[1].float().cpu().numpy() if edges and isinstance(result, tuple) else None
        if not edges:
            return probs
        return probs, edge_logits if self.has_edges else None

    def _to_device(self, inputs: np.ndarray) -> torch.Tensor:
        """Model inputs as a tensor on the model's device. CUDA: copied through this thread's
        page-locked buffer (grown as needed) with an asynchronous transfer; the outputs' copy
        back to the CPU in run_model waits for it, so the buffer is free again on return."""
        batch = torch.from_numpy(np.ascontiguousarray(inputs))
        if self.device.type != "cuda":
            return batch
        pinned = getattr(self._pinned, "buffer", None)
        if pinned is None or pinned.shape[1:] != batch.shape[1:] or len(pinned) < len(batch):
            pinned = torch.empty((max(len(batch), self.batch_size), *batch.shape[1:]), dtype=batch.dtype).pin_memory()
            self._pinned.buffer = pinned
        staged = pinned[:len(batch)]
        staged.copy_(batch)
        return staged.to(self.device, non_blocking=True)

    def classify(self, crops: Sequence[np.ndarray], edges: bool = False):
        """Face crops (BGR uint8) -> AU probabilities (len(crops), N), in batches.

        edges=True: (probs, edge_logits), the stage-2 edge logits (len(crops), N*N, 4) that the
        forward pass computes anyway, or None for a model without them (stage 1, OpenGraphAU)."""
        out, edge_out = [], []
        for start in range(0, len(crops), self.batch_size):
            probs, edge_logits = self.run_model(self.model_inputs(crops[start:start + self.batch_size]), edges=True)
            out.append(probs)
            if edges and edge_logits is not None:
                edge_out.append(edge_logits)
        n = len(self.au_names)
        probs = np.concatenate(out) if out else np.zeros((0, n), np.float32)
        if not edges:
            return probs
        if not self.has_edges:
            return probs, None
        return probs, np.concatenate(edge_out) if edge_out else np.zeros((0, n * n, 4), np.float32)

    def face_results(self, image: np.ndarray, found: Sequence, probs: np.ndarray,
                     crops: Optional[Sequence[np.ndarray]] = None,
                     edge_logits: Optional[np.ndarray] = None,
                     track_ids: Optional[Sequence[int]] = None) -> list[FaceResult]:
        """FaceResults of one image: its faces (faces_and_crops), their probabilities (one row
        each), to keep, their crops, their edge logits (stage-2 ME-GraphAU) and, for video
        frames, their track ids (tracking.FaceTrackIds, one per face)."""
        faces = []
        for i, face in enumerate(found):
            p = probs[i]
            if face is None:  # no detection: the whole image
                h, w = image.shape[:2]
                box, score, landmarks = (0, 0, w, h), None, None
            else:
                box, score, landmarks = tuple(int(round(v)) for v in face.box), face.score, face.landmarks
            faces.append(FaceResult(i, box, p, (p >= self.threshold).astype(np.uint8), score, landmarks,
                                    None if crops is None else crops[i],
                                    None if edge_logits is None else edge_logits[i],
                                    None if track_ids is None else int(track_ids[i])))
        return faces

    def predict_images(self, images: Sequence[np.ndarray], track: bool = False,
                       keep_crops: bool = False) -> list[list[FaceResult]]:
        """Faces of several images, classified together (one list of faces per image). track: the
        images are consecutive video frames; keep_crops: each FaceResult carries its crop."""
        per_image, crops = [], []
        for image in images:
            found, image_crops = self.faces_and_crops(image, track)
            per_image.append((image, found, image_crops))
            crops += image_crops
        probs, edge_logits = self.classify(crops, edges=True)
        results, k = [], 0
        for image, found, image_crops in per_image:
            n = len(found)
            results.append(self.face_results(image, found, probs[k:k + n], image_crops if keep_crops else None,
                                             None if edge_logits is None else edge_logits[k:k + n]))
            k += n
        return results

    def predict_image(self, image_bgr: np.ndarray) -> list[FaceResult]:
        """All faces of one BGR image, largest first (empty when no face is found)."""
        return self.predict_images([image_bgr])[0]
