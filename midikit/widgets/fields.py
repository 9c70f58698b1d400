"""The pieces every notebook form is made of: a `Field` per config field (its widget, label, tooltip
and valid values come from the field's declaration in `midikit.configs`) and the `Form` that turns
the fields' values into a config object and shows the package's own error, or a summary, under them.

A form never does work behind a button (a callback would not run under "Run all" or nbval): the
next cell reads `form.value`. Building a value is pure: it reads (the registry's run.json, a
dataset's config.json) but never creates folders or loads checkpoints.
"""

from __future__ import annotations

import html
from dataclasses import fields

import ipywidgets as W
from IPython.display import display

from ..errors import ConfigError, StorageError
from ..settings import Setting, declared, value_type

# Wide enough for the longest label, "bars of the primer to keep (0 = the whole file)", in Colab's font and
# JupyterLab's: a label cut short hides what 0 means (the browser test checks none is).
LABEL_PX = 320
_STYLE = {"description_width": f"{LABEL_PX}px"}


def _layout():
    return W.Layout(width="660px")  # one per widget: hiding one field must not hide the others


def tooltip(widget, text: str) -> None:
    # ipywidgets 8 calls it `tooltip`; 7.7 (Colab's) `description_tooltip`.
    setattr(widget, "tooltip" if int(W.__version__.split(".")[0]) >= 8 else "description_tooltip", text)


class Field:
    """One config field's widget: made from its declaration; `read()` gives the value for the config
    (0 in a number field whose None means something, such as max_steps' "no limit", reads as None)."""

    def __init__(self, cls, name: str, value=None, label: str | None = None, options=None,
                 zero_means_none: bool = True):
        config_field = {f.name: f for f in fields(cls)}[name]
        self.name, self.meta = name, declared(config_field)
        self.base, optional = value_type(cls, name)
        self.zero_means_none = optional and zero_means_none
        value = config_field.default if value is None and config_field.default is not None else value
        text = label or self.meta.label or name
        if self.zero_means_none and self.base in (int, float) and self.meta.none:
            text += f" (0 = {self.meta.none})"
        self.widget = self._make(text, value, options)
        tooltip(self.widget, self.meta.help)

    def _make(self, text, value, options):
        common = dict(description=text, style=_STYLE, layout=_layout())
        choices = options or self.meta.choices
        if choices:
            return W.Dropdown(options=list(choices), value=value, **common)
        if self.base is bool:
            return W.Checkbox(value=bool(value), indent=False, **common)
        if self.base is int:
            return W.IntText(value=value or 0, **common)
        if self.base is float:
            return W.FloatText(value=value or 0.0, **common)
        return W.Text(value="" if value is None else str(value), continuous_update=False, **common)

    # The widget's value and look, through the field (tests and notebooks set them directly).
    value = property(lambda self: self.widget.value, lambda self, value: setattr(self.widget, "value", value))
    disabled = property(lambda self: self.widget.disabled, lambda self, flag: setattr(self.widget, "disabled", flag))
    layout = property(lambda self: self.widget.layout)

    def read(self):
        value = self.widget.value
        if self.zero_means_none and (value == "" or (self.base in (int, float) and value == 0)):
            return None
        return value

    def show(self, value) -> None:
        self.widget.value = (0 if self.base in (int, float) else "") if value is None else value


class Choice(Field):
    """A dropdown that is not a config field (which run, which file)."""

    def __init__(self, label: str, options, value):
        self.name, self.meta, self.base, self.zero_means_none = label, Setting(), str, False
        self.widget = W.Dropdown(options=options, value=value, description=label, style=_STYLE, layout=_layout())


class Form:
    """Fields plus one message line. Subclasses turn the values into a config object in `build`
    (raising ConfigError/StorageError for bad values) and describe it in `summary`."""

    title = ""

    def __init__(self, form_fields: dict[str, Field], extras=()):
        """`extras`: widgets shown after the fields that are not config fields (an upload button)."""
        self.fields = form_fields
        self._holding = False
        self.message = W.HTML()
        self.box = W.VBox([W.HTML(f"<b>{html.escape(self.title)}</b>"), *(f.widget for f in form_fields.values()),
                           *extras, self.message])
        for form_field in form_fields.values():
            form_field.widget.observe(self._refresh, names="value")
        self._refresh()

    @property
    def value(self):
        """The config object the current field values describe; raises what the package raises."""
        return self.build({name: form_field.read() for name, form_field in self.fields.items()})

    def build(self, values: dict):
        raise NotImplementedError

    def summary(self, value) -> str:
        return "ok"

    def set_values(self, **values) -> None:
        """Set several fields at once, checking the result once rather than after each."""
        held, self._holding = self._holding, True  # observers may set values too: only the outermost call checks
        try:
            for name, value in values.items():
                self.fields[name].show(value)
        finally:
            self._holding = held
        self._refresh()

    def _refresh(self, change=None):
        if self._holding:
            return
        try:
            text, color = "✓ " + self.summary(self.value), "#1a7f37"
        except (ConfigError, StorageError) as exc:
            text, color = "⚠ " + str(exc), "#cf222e"
        self.message.value = f"<span style='color:{color}'>{html.escape(text)}</span>"

    def _ipython_display_(self):
        # Displaying the box itself works in ipywidgets 7 (Colab's) and 8 alike; only 8 has _repr_mimebundle_.
        display(self.box)
