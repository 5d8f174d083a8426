"""Device selection, in one place: CUDA when present, else the CPU.

Call it only in the process that will run the model, after any fork: asking
torch about CUDA in a parent that then forks breaks CUDA in the children.
"""

import torch


def select_device(preference: str = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; anything else is used as given."""
    if preference != "auto":
        return preference
    return "cuda" if torch.cuda.is_available() else "cpu"
