"""Calibration: measure the link and the per-action runtime overhead on this machine (two torchrun
ranks running worker.py) and write them into a Cluster."""
