"""The Fiji plugin and the ImageJ 1 Jython shim, installed by ``nunet fiji install`` (package data)."""
