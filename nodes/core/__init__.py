"""Pure torch core of Likeness: nothing here imports ComfyUI."""
