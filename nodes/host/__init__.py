"""The only part of Likeness that touches `comfy.*`: folders, sites, patching, encoding."""
