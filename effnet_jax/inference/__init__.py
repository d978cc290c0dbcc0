"""Using a trained run: restore a checkpoint, evaluate a split, predict image files, TTA, Grad-CAM."""
