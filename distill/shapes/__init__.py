"""The shapes world the DMD2 trainer is proven on, on a CPU: data, teacher, teacher baselines, classifier, metrics."""

from .classifier import ShapesClassifier, features, load_classifier, predict, save_classifier, train_classifier
from .data import render, sample_batch
from .metrics import evaluate, frechet_distance, prompt_accuracy
from .sampling import teacher_sample
from .teacher import add_noise, train_teacher

__all__ = [
    "ShapesClassifier", "add_noise", "evaluate", "features", "frechet_distance", "load_classifier", "predict",
    "prompt_accuracy", "render", "sample_batch", "save_classifier", "teacher_sample", "train_classifier",
    "train_teacher",
]
