"""Named model + optimisation presets, and the choice of one for the hardware at hand.

`large` reproduces the original project's Colab configs (A100-class GPU), `small` its script
defaults, `t4` fits a 16 GB Colab T4, and `cpu` trains in minutes on a laptop or CI machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .configs import MODEL_TYPES, PRESET_NAMES, ModelConfig
from .errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: dict = field(default_factory=dict)  # ModelConfig fields
    batch_size: int = 64
    lr: float = 1e-3

    def model_config(self, model_type: str, vocab_size: int, context_length: int | None = None) -> ModelConfig:
        values = dict(self.model, model_type=model_type, vocab_size=vocab_size)
        if context_length is not None:
            values["context_length"] = context_length
        return ModelConfig(**values).validate()


_RNN = {
    "large": Preset("large", "the original project's large Colab config (A100)",
                    dict(embed_size=128, hidden_size=1024, num_layers=4, dropout=0.4), 512, 1e-3),
    "t4": Preset("t4", "fits a 16 GB Colab T4",
                 dict(embed_size=128, hidden_size=512, num_layers=3, dropout=0.3), 256, 1e-3),
    "small": Preset("small", "the original project's script defaults",
                    dict(embed_size=128, hidden_size=256, num_layers=2, dropout=0.2), 64, 1e-3),
    "cpu": Preset("cpu", "trains in minutes on a CPU",
                  dict(embed_size=64, hidden_size=128, num_layers=1, dropout=0.1), 32, 3e-3),
}

_TRANSFORMER = {
    "large": Preset("large", "the original project's large Colab config (A100)",
                    dict(d_model=1024, nhead=16, num_layers=8, dim_feedforward=4096, dropout=0.3), 256, 1e-4),
    "t4": Preset("t4", "fits a 16 GB Colab T4",
                 dict(d_model=512, nhead=8, num_layers=6, dim_feedforward=2048, dropout=0.2), 128, 3e-4),
    "small": Preset("small", "the original project's script defaults",
                    dict(d_model=256, nhead=4, num_layers=4, dim_feedforward=1024, dropout=0.1), 64, 3e-4),
    "cpu": Preset("cpu", "trains in minutes on a CPU",
                  dict(d_model=128, nhead=4, num_layers=2, dim_feedforward=512, dropout=0.1), 32, 1e-3),
}

PRESETS: dict[str, dict[str, Preset]] = {"lstm": _RNN, "gru": _RNN, "transformer": _TRANSFORMER}


def get_preset(model_type: str, name: str) -> Preset:
    if model_type not in PRESETS:
        raise ConfigError(f"Unknown model_type {model_type!r}: choose one of {', '.join(MODEL_TYPES)}.")
    if name not in PRESETS[model_type]:
        raise ConfigError(f"Unknown preset {name!r}: choose one of {', '.join(PRESET_NAMES)}.")
    return PRESETS[model_type][name]


def preset_for_hardware(device: str | None = None) -> str:
    """'large' on a 40 GB-class GPU, 't4' on a smaller GPU, 'cpu' without one."""
    import torch

    from .models import resolve_device

    resolved = resolve_device(device or "auto")
    if resolved.type != "cuda":
        return "cpu"
    total = torch.cuda.get_device_properties(resolved).total_memory
    return "large" if total >= 38 * 2**30 else "t4"  # a "40 GB" A100 reports 39.4 GiB
