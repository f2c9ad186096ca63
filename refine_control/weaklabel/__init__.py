"""Methods of four weak-label papers (torch only; no diffusers)."""
