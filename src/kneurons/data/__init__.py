"""Stage 1, data: sequences, labels, motifs, splits."""
