"""Inference: AUDetector, MTCNN faces and crops, the video pipeline, drawing results."""
