"""The sample images (installed as package data: napari's File > Open Sample, the quick start)."""
