"""The notebooks' faces: `forms` (ipywidgets that build config objects) and `displays` (tables,
plots, piano rolls and audio of what the package did). Notebooks use `from midikit import widgets`."""

from .displays import *  # noqa: F401,F403
from .forms import *  # noqa: F401,F403
