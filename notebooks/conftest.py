"""nbval runs the seven notebooks in order against one shared checkpoint folder, as a user would:
02 preprocesses, 03-05 train, and 06-07 look at the runs 03-05 made. A fresh folder each time, so
nothing from an earlier run (or the user's own $MIDIKIT_ROOT) is read or written."""

import os
import tempfile


def pytest_configure(config):
    os.environ["MIDIKIT_ROOT"] = tempfile.mkdtemp(prefix="midikit_notebooks_")
    os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="midikit_config_")  # not the user's remembered folder
