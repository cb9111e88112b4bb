"""Likeness nodes. The extension and its node list are in nodes/extension.py; this package stays import-light so
`python -m nodes.doctor` works without ComfyUI's server."""
