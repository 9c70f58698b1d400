"""The training form: hyperparameters for one model type on one dataset.

A new run starts from the last run's values for this dataset and model type (typed once, kept by
the run registry), else from defaults sized for this hardware: a few steps on a CPU, and on a GPU a
first run of about five minutes (`midikit.estimates`, an estimate, with a time budget as a guard).
While an unfinished run is to be resumed, or a finished one to be extended, the model fields show that
run's own sizes, read-only: a run keeps its model (on whatever GPU the runtime has now).
"""

from __future__ import annotations

from .. import estimates, presets, runs, storage
from ..configs import ModelConfig, TrainConfig, model_fields
from .fields import Field, Form

__all__ = ["CPU_MAX_STEPS", "CPU_EVAL_EVERY", "CPU_EVAL_WINDOWS", "TrainForm", "first_run_defaults"]

# A first run on a CPU (a laptop, CI): a few steps, so every notebook runs top to bottom in seconds.
CPU_MAX_STEPS = 40
CPU_EVAL_EVERY = 20
CPU_EVAL_WINDOWS = 64
LOOP_FIELDS = ("epochs", "max_steps", "max_minutes", "eval_every", "eval_windows", "patience",
               "checkpoint_every_minutes", "seed")


def first_run_defaults(model_type: str, dataset, preset_name: str) -> tuple[dict, str]:
    """(training-field values, a sentence saying what they are) for a first run on this hardware."""
    if preset_name == "cpu":
        return (dict(max_steps=CPU_MAX_STEPS, eval_every=CPU_EVAL_EVERY, eval_windows=CPU_EVAL_WINDOWS),
                f"a first run of {CPU_MAX_STEPS} steps, quick on a CPU")
    import torch

    from ..models import build_model, count_parameters

    preset = presets.get_preset(model_type, preset_name)
    config = preset.model_config(model_type, dataset.vocab_size, context_length=dataset.seq_length)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    with torch.device("meta"):  # only its size is wanted: no memory, no time
        parameters = count_parameters(build_model(config))
    steps = estimates.first_run_steps(model_type, parameters, preset.batch_size * config.context_length, gpu)
    if steps is None:
        return dict(max_minutes=estimates.FIRST_RUN_MINUTES), f"a first run of {estimates.FIRST_RUN_MINUTES:g} minutes"
    return (dict(max_steps=steps, eval_every=max(50, steps // 5), max_minutes=estimates.FIRST_RUN_GUARD_MINUTES),
            f"a first run sized for about {estimates.FIRST_RUN_MINUTES:g} minutes on this {gpu} ({steps:,} steps, an "
            f"estimate; at most {estimates.FIRST_RUN_GUARD_MINUTES:g} minutes)")


class TrainForm(Form):
    """`.value` -> (TrainConfig, ModelConfig). What is resumable comes from the run registry
    (run.json), never from loading a checkpoint."""

    TRAIN_FIELDS = ("epochs", "batch_size", "lr", "max_steps", "max_minutes", "eval_every", "eval_windows", "patience",
                    "checkpoint_every_minutes", "seed")

    def __init__(self, model_type: str, paths: storage.DatasetPaths, preset: str | None = None):
        from ..data import load_dataset

        self.model_type, self.paths = model_type, paths
        self.dataset = load_dataset(paths)
        self.title = f"Train the {model_type} on {paths.dataset}"
        self.model_names = model_fields(model_type)
        last = self._last_run(preset)
        preset = preset or (last["train_config"]["preset"] if last else presets.preset_for_hardware())
        loop_values, self.origin = self._loop_defaults(last, preset)
        self._last, self._filling, self.run = last, False, None
        self.preset_field = Field(TrainConfig, "preset", preset, options=[
            (f"{name}: {presets.get_preset(model_type, name).description}", name) for name in presets.PRESET_NAMES])
        super().__init__({
            "preset": self.preset_field,
            **{name: Field(ModelConfig, name) for name in self.model_names},
            # batch_size and lr show the preset's (or the run's) values: 0 is not "the preset's" here.
            **{name: Field(TrainConfig, name, loop_values.get(name), zero_means_none=name not in ("batch_size", "lr"))
               for name in self.TRAIN_FIELDS},
            "resume": Field(TrainConfig, "resume", "auto", options=[("auto", "auto")]),
            "extend": Field(TrainConfig, "extend", False, label="extend (a new horizon for the run)"),
        })
        for name in ("preset", "resume", "extend"):
            self.fields[name].widget.observe(self._fill_model_fields, names="value")
        self._fill_model_fields()

    # -- where the values come from --------------------------------------------
    def _last_run(self, preset: str | None) -> dict | None:
        """The newest run of this model type on this dataset, if it trained on this kind of hardware
        (a GPU run's sizes would not fit a CPU session, and the other way round is too small)."""
        on_cpu = presets.preset_for_hardware() == "cpu"
        for record in runs.list_runs(self.paths, model_type=self.model_type):
            settings, model = record.get("train_config"), record.get("model_config")
            if (isinstance(settings, dict) and isinstance(model, dict)
                    and settings.get("preset") in presets.PRESET_NAMES):
                same_hardware = str(settings.get("device", "")).startswith("cuda") != on_cpu
                if same_hardware and (preset is None or settings["preset"] == preset):
                    return {"run_id": record.run_id, "train_config": settings, "model_config": model}
        return None

    def _loop_defaults(self, last: dict | None, preset: str) -> tuple[dict, str]:
        if last is not None:
            values = {name: last["train_config"].get(name) for name in LOOP_FIELDS}
            return values, f"values of the last run, {last['run_id']}"
        return first_run_defaults(self.model_type, self.dataset, preset)

    def _continued_run(self) -> dict | None:
        """The run that resume "auto" continues (an unfinished one; with extend, else the newest finished
        one), from the registry; None when a new run would start."""
        from ..train import describe_resumable

        probe = TrainConfig(dataset=self.paths.dataset, checkpoint_dir=str(self.paths.root), model_type=self.model_type,
                            extend=self.fields["extend"].widget.value)
        return describe_resumable(probe)

    def _resume_options(self, run: dict | None) -> list[tuple[str, str]]:
        if run is None:
            return [("auto: a new run (nothing to continue)", "auto"), ("never: start a new run", "never")]
        verb = "extend" if run["done"] else "continue"
        options = [(f"{verb} {run['run_id']} ({run['progress']})", "auto"), ("never: start a new run", "never")]
        # another runtime still trains it: continuing is refused, taking over is a choice
        if run["owner_state"] == "live":
            options[0] = (f"continue {run['run_id']} once its other runtime stops", "auto")
            options.insert(1, (f"take over {run['run_id']} from {run['owner']}", "takeover"))
        return options

    def _fill_model_fields(self, change=None):
        if self._filling:  # changing the dropdown's options below fires this observer again
            return
        resume = self.fields["resume"].widget
        self._filling, held, self._holding = True, self._holding, True  # one check at the end, not one per field
        try:
            auto_run, chosen = self._continued_run(), resume.value
            resume.options = self._resume_options(auto_run)
            resume.value = chosen if chosen in [value for _, value in resume.options] else "auto"
            self.run = auto_run if resume.value != "never" else None
            self._show_model(self.run)
        finally:
            self._filling, self._holding = False, held
        self._refresh()

    def _show_model(self, run: dict | None) -> None:
        if run is not None:
            config = ModelConfig.from_dict(run["model_config"])
            batch_size, lr = run["train_config"]["batch_size"], run["train_config"]["lr"]
        else:
            preset = presets.get_preset(self.model_type, self.preset_field.widget.value)
            config = preset.model_config(self.model_type, self.dataset.vocab_size,
                                         context_length=self.dataset.seq_length)
            batch_size, lr = preset.batch_size, preset.lr
            last = self._last
            if last is not None and self.preset_field.widget.value == last["train_config"]["preset"]:
                config = ModelConfig.from_dict(last["model_config"])  # the sizes typed for the last run
                batch_size, lr = last["train_config"]["batch_size"], last["train_config"]["lr"]
        self.set_values(**{name: getattr(config, name) for name in self.model_names}, batch_size=batch_size, lr=lr)
        for name in ("preset", *self.model_names, "batch_size", "lr"):
            self.fields[name].widget.disabled = run is not None  # a run keeps these: train() would refuse new values

    @property
    def resuming(self) -> bool:
        """Whether the form's settings continue a run (its model fields then show the run's own)."""
        return self.run is not None

    # -- the value ----------------------------------------------------------------
    def build(self, values):
        from ..train import check_context

        run = self.run
        if run is not None:  # exactly the saved config, so train() finds nothing that conflicts with the run
            model_config = ModelConfig.from_dict(run["model_config"])
        else:
            sizes = {name: values[name] for name in self.model_names}
            model_config = ModelConfig(model_type=self.model_type, vocab_size=self.dataset.vocab_size,
                                       **sizes).validate()
        check_context(model_config, self.dataset)  # train() refuses a context longer than a split: say so here
        train_config = TrainConfig(
            dataset=self.paths.dataset, checkpoint_dir=str(self.paths.root), model_type=self.model_type,
            preset=values["preset"], resume="never" if values["resume"] == "never" else "auto",
            takeover=values["resume"] == "takeover", extend=values["extend"],
            **{name: values[name] for name in self.TRAIN_FIELDS},
        ).validate()
        return train_config, model_config

    def summary(self, configs):
        train_config, model_config = configs
        length = (f"{train_config.max_steps:,} steps" if train_config.max_steps
                  else f"up to {train_config.epochs} epochs")
        if train_config.max_minutes:
            length += f", at most {train_config.max_minutes:g} min this session"
        run = self.run
        if run is None:
            origin = f"new run ({self.origin})"
        elif train_config.extend:
            origin = f"extends {run['run_id']} ({run['progress']}) to a new horizon"
        else:
            origin = f"continues {run['run_id']} ({run['progress']}) with its own model and horizon"
        return (f"{origin}: {model_config.model_type} · {model_config.num_layers} layers · context "
                f"{model_config.context_length} · batch {train_config.batch_size} · lr {train_config.lr:g} · {length}")
