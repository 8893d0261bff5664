"""SYNTH: a procedurally drawn facial action unit data set that every command can run on.

Real AU data sets (BP4D, DISFA) are licensed and cannot be shipped, so this package draws
cartoon-like but shaded faces in numpy in which each of 12 action units (FACS, as in
ME-GraphAU's BP4D/DISFA setting) has a visible, learnable cue that is present exactly when
its label is 1:

    AU1 inner brow raiser    inner brow ends up + central forehead lines
    AU2 outer brow raiser    outer brow ends up + lateral forehead lines
    AU4 brow lowerer         brows down and drawn together + vertical glabella lines
    AU5 upper lid raiser     upper lids up: sclera above the iris, crease near the lashes
    AU6 cheek raiser         cheek bulges + infraorbital furrow + crow's-feet lines
    AU7 lid tightener        lower lids raised, straightened and darkened + tension line, bulge
    AU9 nose wrinkler        wrinkles across the nose bridge + raised nostrils
    AU12 lip corner puller   lip corners up + nasolabial (smile) folds
    AU15 lip corner depressor lip corners down + creases below them
    AU17 chin raiser         chin boss: bulge, mentolabial furrow, dimpled chin
    AU25 lips part           dark gap with teeth between the lips
    AU26 jaw drop            longer chin and jaw (gap taller when lips part, closed mouth
                             lower when they do not)

Cue sizes are chosen so that they survive the CPU quickstart's 91-pixel resize (80-pixel crops,
megraphau/configs/SYNTH.yaml): there a ResNet-18 from scratch (train_stage1.py, fold 1, 8 epochs) reaches a
test-fold mean F1 of 72-82 over seeds (all-positive baseline 42); every AU beats its all-positive
F1, AU5 and AU7 are the hardest cues (F1 59-65 in every seed), AU9 and AU15 the least stable ones.

Faces vary by identity (skin tone, face shape, hair, feature sizes) and by frame (pose rotation,
scale, translation, lighting gradient, background colour and texture, sensor noise, gaze) — all
in :class:`FaceParams`, drawn by :func:`sample_params`. Labels are drawn with realistic
co-occurrence by :func:`sample_labels`. :func:`generate_synthetic_dataset` writes a BP4D-style
tree ``img/{subject}/{task}/{frame}.jpg`` plus the 3-fold lists (megraphau/data/lists.py); MTCNN
(:class:`megraphau.inference.faces.FaceDetector`) finds the drawn faces.
:func:`ensure_synthetic_dataset` generates it once, on first use, for whoever asks (the engine
when a run names the SYNTH config, or the command line).

Same pixels on every machine: the drawing (anti-aliased shapes by exact supersampling, Gaussian
shading blurs and the bicubic background as products of integer matrices, noise from random
bytes) uses only correctly rounded double arithmetic and integers in numpy, no OpenCV drawing,
blurring or resampling (those differ between OpenCV versions and CPU dispatch: generator version
1 drew with them, and its images differed by up to 180 grey levels at anti-aliased edges between
OpenCV 4.6-4.10 and 4.14). The JPEG files are written by OpenCV's libjpeg-turbo, whose output
was the same bytes in every wheel tried (tests/test_synth_faces.py pins a digest of the pixels).

The same faces in OpenGraphAU's 41-AU hybrid layout (:func:`generate_hybrid_synthetic_dataset`,
megraphau/configs/SYNTH_OpenGraphAU.yaml): four sources that each code a subset of the drawn AUs,
-1 elsewhere, in the release's hybrid list files (module hybrid).

One module per job: params (FaceParams, identities, AU labels), exactmath (sin/cos/exp, blur
weights, resampling and noise in exact arithmetic), raster (anti-aliased coverage, painting),
canvas (the posed drawing surface), draw (the face, render_face, landmarks, preview_grid),
writer (the data set on disk), hybrid (the 41-AU hybrid set on disk). Import from the package:
``from megraphau.synth import render_face``.

Command line (tool/synth_faces.py)::

    python tool/synth_faces.py --output data/SYNTH --seed 0
    python tool/synth_faces.py --hybrid --output data/SYNTH_OpenGraphAU
    python tool/synth_faces.py --preview synth_preview.png
"""

from megraphau.synth.draw import AU_REGIONS, landmarks, preview_grid, render_face
from megraphau.synth.hybrid import (
    HYBRID_MARKER,
    HYBRID_ROOT,
    SOURCES,
    ensure_hybrid_synthetic_dataset,
    generate_hybrid_synthetic_dataset,
)
from megraphau.synth.params import (
    SYNTH_AUS,
    FaceParams,
    neutral_params,
    sample_identity,
    sample_labels,
    sample_params,
)
from megraphau.synth.writer import (
    DEFAULT_ROOT,
    GENERATOR_VERSION,
    MARKER_NAME,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
)

__all__ = ["SYNTH_AUS", "AU_REGIONS", "FaceParams", "sample_identity", "sample_params",
           "neutral_params", "render_face", "landmarks", "sample_labels",
           "generate_synthetic_dataset", "ensure_synthetic_dataset", "preview_grid",
           "DEFAULT_ROOT", "MARKER_NAME", "GENERATOR_VERSION", "generate_hybrid_synthetic_dataset",
           "ensure_hybrid_synthetic_dataset", "HYBRID_ROOT", "HYBRID_MARKER", "SOURCES"]
