"""Serving an exported model with jax, numpy and Pillow alone (no Flax, no training code).

    model = effnet_jax.serving.load("exported/")   # written by effnet-export
    probs = model([image1, image2])                # uint8 (H, W) or (H, W, 3), any size -> P(PNEUMONIA)
    labels = probs >= model.threshold

``model.predict_files(paths)`` reads image and DICOM files as effnet-predict does;
``model.gradcam(inputs)`` draws the guided Grad-CAM map exported beside the function.
"""

from effnet_jax.serving.bundle import ExportedModelError
from effnet_jax.serving.model import ExportedModel, ImageBudgetError, ImageInputError, load, read_image

__all__ = ["ExportedModel", "ExportedModelError", "ImageBudgetError", "ImageInputError", "load", "read_image"]
