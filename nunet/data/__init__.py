"""Data shared by training and evaluation: annotated real images and their splits."""
