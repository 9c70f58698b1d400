"""midikit: train LSTM, GRU and Transformer MIDI generators in Colab, with checkpoints on Drive
that survive disconnects. See README.md and docs/."""

__version__ = "0.1.0"
