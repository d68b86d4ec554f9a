"""The stethoscope Ray Serve application (``serve/app.py``) and its config (``serve/config.yaml``)."""
