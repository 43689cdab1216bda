"""The run's report: figures (``plots``) and report.md (``report``), from whatever a run directory holds."""
