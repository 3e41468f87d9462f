"""BentoML serving for ganops (kept out of the library: `src/ganops` never imports BentoML)."""
