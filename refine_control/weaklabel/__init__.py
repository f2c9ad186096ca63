"""Methods of four weak-label papers (torch only; no diffusers). See docs/weaklabel.md.

- UPLLRS (IJCAI 2023): `partial_label` (candidate-set generator, CC / PRODEN / RC), `upllrs` (recursive
  separation, PRODEN + FixMatch).
- Learning From Biased Soft Labels (NeurIPS 2023): `soft_labels` (Δ/γ indicators, Δ + γ < 1 check, top-k loss,
  soft-label producers).
- Intra-class contrastive KD (arXiv 2509.22053): `intraclass` (gated intra-class InfoNCE, feature memory, KD
  student, distance diagnostics), `soft_kd` (the Hinton KD loss).
- Parameter transfer (arXiv 2509.22056): the general partial-transfer routine lives in the core
  (`refine_control.models.transfer`, also used by `refine-distill --init`); `transfer_model` holds the paper's data
  model and two-layer ReLU CNN.

The `*_experiment` modules and `cli` (`refine-weaklabel`) run the CPU-scale reproductions. Submodules are not
imported here, so importing one of them stays light.
"""
