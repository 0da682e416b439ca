"""Stage 3, attribution: scoring every unit (the engines and methods/)."""
