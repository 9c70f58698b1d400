"""The notebooks' faces: forms (ipywidgets that build config objects: `forms`, `train_form`,
`generate_form`, made of `fields`), `displays` (tables and plots of what the package did) and
`listening` (piano rolls, audio, a zip of the pieces, the quality report). Notebooks use
`from midikit import widgets`."""

from .displays import *  # noqa: F401,F403
from .fields import Choice, Field, Form  # noqa: F401
from .forms import *  # noqa: F401,F403
from .generate_form import *  # noqa: F401,F403
from .listening import *  # noqa: F401,F403
from .train_form import *  # noqa: F401,F403
