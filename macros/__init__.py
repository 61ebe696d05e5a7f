"""Example ImageJ macros and Jython scripts, installed by ``nunet fiji install`` (package data)."""
