"""Stage 5, reporting: tables, summaries and figures over seeds."""
