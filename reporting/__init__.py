"""The report stage's page and plots (reporting/page.py). It imports dpu and flow only."""
