"""Speed and crop geometry of faces.py (MTCNN via facenet-pytorch) and tool/crop_faces.py:

- detection: ms per 640x480 frame for a full MTCNN detection (the astronaut photo of tests/data
  in the frame), at the detector's default smallest face (40 px) and at MTCNN's own (20 px);
- tracking: ms per frame of FaceTracker's landmark stage alone (O-Net, and R-Net + O-Net) on
  the previous frame's box, the face moving a few pixels per frame;
- crop tool: frames/s of ``crop_image_tree`` on 1040x1392 JPEG frames (BP4D's raw size: decode,
  detect on a 640 copy, warp, write) with 1 and 2 worker processes (start-up included), and
  the time this gives for all of BP4D (146,000 frames);
- presets: the acceptance check of the crop presets. The photo is put into raw-sized frames
  (BP4D 1040x1392, DISFA 1024x768) at several positions, scales and turns, cropped with each
  preset and detected again in the crop; the table gives the worst eye-distance ratio error and
  the worst distance of the eye and mouth midpoints from the authors' crops' (faces.py
  MEASURED_LANDMARKS; pass: 10%, 8 px).

Timings repeat ``--rounds`` times and print min-max (the machine may be shared).

  python bench/bench_faces.py [--rounds 3] [--frames 32] [--markdown] [--json out.json]
  python bench/bench_faces.py --skip crop-tool presets      # timings of faces.py alone
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from megraphau.inference import cropping  # noqa: E402
from megraphau.tables import format_table  # noqa: E402

PHOTO = ROOT / "tests" / "data" / "astronaut.jpg"
BP4D_FRAMES = 146_000
#: (frame (H, W), photo scale, turn in degrees, photo centre as fractions of the frame).
PLACEMENTS = {
    "BP4D": [((1392, 1040), s, a, c) for s, a, c in [
        (3.0, 0.0, (0.5, 0.45)), (4.0, 6.0, (0.45, 0.5)), (4.5, -8.0, (0.55, 0.55)),
        (3.5, 3.0, (0.4, 0.4)), (2.5, -4.0, (0.6, 0.6))]],
    "DISFA": [((768, 1024), s, a, c) for s, a, c in [
        (1.6, 0.0, (0.5, 0.5)), (2.0, 5.0, (0.4, 0.45)), (1.3, -7.0, (0.6, 0.55)),
        (2.4, 2.0, (0.5, 0.4))]],
}


def place(photo: np.ndarray, frame_hw, scale: float, angle: float, centre_xy) -> np.ndarray:
    """``photo`` turned by ``angle`` degrees and scaled about its centre, at ``centre_xy``
    (pixels) of a frame of ``frame_hw`` filled with a flat background."""
    h, w = photo.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
    matrix[:, 2] += np.subtract(centre_xy, ((w - 1) / 2, (h - 1) / 2))
    return cv2.warpAffine(photo, matrix, frame_hw[::-1], borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(96, 112, 128))


def span(values: list[float], digits: int = 1) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.{digits}f}" if round(lo, digits) == round(hi, digits) else f"{lo:.{digits}f}-{hi:.{digits}f}"


def time_per_call(fn, calls: int, rounds: int) -> list[float]:
    """ms per call of ``fn()``, one value per round (after one warm-up call)."""
    fn()
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - start) / calls * 1000)
    return out


def bench_detection(photo, rounds: int) -> list[list[str]]:
    from megraphau.inference.faces import FaceDetector
    frame = place(photo, (480, 640), 1.0, 0.0, (320, 240))
    rows = []
    for min_face in (40, 20):
        detector = FaceDetector(min_face_size=min_face)
        assert len(detector.detect(frame)) == 1
        ms = time_per_call(lambda d=detector: d.detect(frame), 5, rounds)
        rows.append([f"full MTCNN detection, 640x480, smallest face {min_face} px", span(ms) + " ms",
                     span([1000 / m for m in ms]) + " frames/s"])
    return rows


def bench_tracking(photo, rounds: int) -> list[list[str]]:
    """FaceDetector.refine of each frame from the previous frame's detected face."""
    from megraphau.inference.faces import FaceDetector
    detector = FaceDetector()
    frames = [place(photo, (480, 640), 1.0, 0.5 * i, (300 + 3 * i, 230 + i)) for i in range(10)]
    previous = [detector.detect(frame) for frame in frames[:-1]]
    rows = []
    for use_rnet in (False, True):
        def track_sequence(use_rnet=use_rnet):
            for faces, frame in zip(previous, frames[1:]):
                assert detector.refine(frame, faces, use_rnet=use_rnet)[0].score > 0.9
        ms = [m / len(previous) for m in time_per_call(track_sequence, 2, rounds)]
        name = "R-Net + O-Net" if use_rnet else "O-Net"
        rows.append([f"tracker landmark stage ({name}), 640x480, 1 face", span(ms, 2) + " ms",
                     span([1000 / m for m in ms], 0) + " frames/s"])
    return rows


def _write_frames(photo, folder: Path, count: int) -> None:
    """``count`` BP4D-sized JPEG frames {subject}/T1/{i}.jpg, the face moving a little."""
    for i in range(count):
        frame = place(photo, (1392, 1040), 3.0 + 0.05 * (i % 10), (i % 7) - 3.0,
                      (500 + 4 * (i % 9), 620 + 3 * (i % 5)))
        path = folder / f"F{i % 4:03d}" / "T1" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, 90])


def bench_crop_tool(photo, frames: int, rounds: int) -> tuple[list[list[str]], dict]:
    """Frames/s of the crop tool's per-frame work (cropping.crop_file: decode, detect on a 640
    copy, warp, write) in this process or its worker pool, timed after the workers have started
    (each imports torch and facenet-pytorch once: seconds, reported apart)."""
    from megraphau.inference.faces import FaceDetector
    detector = FaceDetector()
    opt = dict(size=256, preset="BP4D", min_face=0.1, detect_size=cropping.DETECT_SIZE,
               skip_no_face=False)
    rows, numbers = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        _write_frames(photo, raw, frames)
        paths = sorted(raw.rglob("*.jpg"))

        def jobs(name: str, chosen):
            out = Path(tmp) / name
            return [(p, out / p.relative_to(raw), p.relative_to(raw).as_posix(), opt) for p in chosen]

        for workers in (1, 2):
            start = time.perf_counter()
            pool = cropping.worker_pool(workers, detector) if workers > 1 else None
            warm = jobs(f"warm{workers}", paths[:2 * workers])
            if pool is None:
                [cropping.crop_file(job, detector) for job in warm]
            else:
                list(pool.map(cropping.crop_file, warm))
            start_up = time.perf_counter() - start
            rates = []
            for r in range(rounds):
                batch = jobs(f"out{workers}_{r}", paths)
                start = time.perf_counter()
                if pool is None:
                    results = [cropping.crop_file(job, detector) for job in batch]
                else:
                    results = list(pool.map(cropping.crop_file, batch, chunksize=8))
                rates.append(frames / (time.perf_counter() - start))
                assert all(found and written for _, found, written in results)
            if pool is not None:
                pool.shutdown()
            numbers[workers] = dict(frames_per_s=rates, start_up_s=start_up)
            hours = [BP4D_FRAMES / r / 3600 for r in rates]
            rows.append([f"crop_faces.py on 1040x1392 jpg frames, --workers {workers}",
                         span(rates) + " frames/s (" + span([r / workers for r in rates])
                         + f" per worker; start-up {start_up:.1f} s)",
                         "all of BP4D (146,000 frames): " + span(hours) + " h"])
    return rows, numbers


def check_presets(photo, placements: int = 0) -> tuple[list[list[str]], dict]:
    """Worst deviations from the authors' crops over the placements (the first
    ``placements`` of each dataset when > 0), per preset."""
    from megraphau.inference import faces
    detector = faces.FaceDetector()
    placements_of = {d: p[:placements or None] for d, p in PLACEMENTS.items()}
    worst = {}
    for preset in faces.CROP_PRESETS:
        table = np.array(faces.MEASURED_LANDMARKS[preset])
        eye_ratio, eye_mid, mouth_mid, crops = 0.0, 0.0, 0.0, 0
        for dataset in PLACEMENTS:
            for frame_hw, scale, angle, (fx, fy) in placements_of[dataset]:
                frame = place(photo, frame_hw, scale, angle, (fx * frame_hw[1], fy * frame_hw[0]))
                found = detector.detect(frame)
                assert found, (dataset, scale, angle)
                crop = faces.align_crop(frame, found[0], preset)
                again = detector.detect(crop)
                assert again, (preset, dataset, scale, angle)
                marks = again[0].landmarks
                eye_ratio = max(eye_ratio, abs(np.hypot(*(marks[1] - marks[0]))
                                               / np.hypot(*(table[1] - table[0])) - 1))
                eye_mid = max(eye_mid, np.hypot(*(marks[:2].mean(0) - table[:2].mean(0))))
                mouth_mid = max(mouth_mid, np.hypot(*(marks[3:].mean(0) - table[3:].mean(0))))
                crops += 1
        worst[preset] = dict(eye_distance_error=eye_ratio, eye_midpoint_px=eye_mid,
                             mouth_midpoint_px=mouth_mid, crops=crops)
    rows = []
    for p, w in worst.items():
        passed = (w["eye_distance_error"] < 0.10 and w["eye_midpoint_px"] < 8
                  and w["mouth_midpoint_px"] < 8)
        rows.append([f"preset {p}: worst of {w['crops']} crops",
                     f"eye distance {100 * w['eye_distance_error']:.1f}% (<10%)",
                     f"eye midpoint {w['eye_midpoint_px']:.1f} px, mouth midpoint "
                     f"{w['mouth_midpoint_px']:.1f} px (<8 px): {'pass' if passed else 'over'}"])
    return rows, worst


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timing repeats (min-max shown)")
    parser.add_argument("--frames", type=int, default=32, help="frames for the crop tool run")
    parser.add_argument("--placements", type=int, default=0,
                        help="presets check: only the first N placements per dataset (0: all)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["detection", "tracking", "crop-tool", "presets"])
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", help="also write the numbers to this file")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch
    photo = cv2.imread(str(PHOTO))
    rows, numbers = [], {"torch_threads": torch.get_num_threads()}
    if "detection" not in args.skip:
        rows += bench_detection(photo, args.rounds)
    if "tracking" not in args.skip:
        rows += bench_tracking(photo, args.rounds)
    if "crop-tool" not in args.skip:
        tool_rows, numbers["crop_tool_frames_per_s"] = bench_crop_tool(photo, args.frames, args.rounds)
        rows += tool_rows
    if "presets" not in args.skip:
        preset_rows, numbers["presets"] = check_presets(photo, args.placements)
        rows += preset_rows
    numbers["rows"] = rows
    print(format_table(["measure", "result", ""], rows, args.markdown))
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=1, default=float))


if __name__ == "__main__":
    main()
