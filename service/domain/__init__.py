"""The model of jobs and what they store: pure, no I/O and no framework."""
