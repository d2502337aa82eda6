"""Project datasets for the catalog (``type: capacity_forecaster.datasets.<Class>``)."""
