"""Stage 4, analysis: pruning sweeps, statistics, knowledge neurons, concept detectors."""
