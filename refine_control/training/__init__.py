"""The recipe and its stages: the compact student (tri-level knowledge fusion, semi-supervised stage 2), the
few-step student (latent consistency distillation), the tiny decoder; the trainer that runs a stage on accelerate,
its setup, checkpoints, the run directory and the run's config (`DistillConfig`).

Depends on `models`, `losses`, `data` and the torch-free `runtime`; nothing below imports it.
"""
