"""Declarative models: a model as a TOML or JSON config, and back.

::

    cfg = ck.config.model_to_config(model)         # a dict of plain values
    model = ck.config.model_from_config(cfg)        # the same architecture (fresh weights)
    ck.config.save_config(model, "net.toml")        # or .json; atomic
    model = ck.config.load_model("net.toml")        # load_config + model_from_config

Format (TOML shown; JSON has the same structure)::

    name = "lenet5"
    dtype = "float32"               # optional (default float32)
    input_shape = [1, 28, 28]       # a chain (Sequential): each layer feeds the next

    [[layers]]
    type = "conv2d"                 # a registered layer type (cnnkit plugins lists them)
    name = "conv1"                  # optional; default "<type>_<k>" (k-th of that type)
    in_channels = 1                 # the rest: constructor arguments, as get_config() gives
    out_channels = 6
    kernel_size = 5
    padding = 2
    impl = "numpy"                  # optional variant choice
    weight_init = "he_uniform"      # optional initializers by registered name, or
    bias_init = {name = "uniform", a = -0.1, b = 0.1}   # a name with options

A graph (DAG) names its inputs and outputs and each layer's ``inputs`` by node name; a layer
without ``inputs`` takes the previous entry's output (the model input for the first)::

    outputs = ["fc"]                # a string for a single output, a list for a list
    [[inputs]]
    name = "x"
    shape = [3, 32, 32]
    [[layers]]
    type = "add"
    name = "sum1"
    inputs = ["conv1", "conv2"]

TOML has no null: where JSON has ``null`` (say ``momentum = null`` of a BatchNorm1D, a
cumulative average), TOML writes ``momentum = { none = true }``.

An optional ``[training]`` section describes how ``cnnkit train CONFIG`` trains the model (see
:func:`training_from_config`).

Errors in a config raise :class:`ConfigError` naming the entry (``layers[3] "c3" (conv2d)``),
the line in the file when the config was read with :func:`load_config`, and what was expected.

Modules: :mod:`._locator` (errors pointing into the file), :mod:`.model` (model <-> config),
:mod:`.toml` (the TOML writer and reader), :mod:`.files` (text and files),
:mod:`.training` (the ``[training]`` section and its factories).
"""
from ..datasets import synthetic_data
from ._locator import Config, ConfigError
from .files import dumps, load_config, load_model, loads, save_config
from .model import FORMAT_VERSION, model_from_config, model_to_config  # noqa: F401
from .toml import dumps_toml
from .training import (TrainingSpec, load_data, make_boosted, make_loss, make_optimizer,
                       make_regularizer, make_schedule, make_transform, training_from_config)

__all__ = ["ConfigError", "Config", "model_to_config", "model_from_config", "load_config",
           "save_config", "load_model", "dumps_toml", "dumps", "loads", "TrainingSpec",
           "training_from_config", "make_optimizer", "make_loss", "make_schedule",
           "make_regularizer", "make_transform", "make_boosted", "load_data", "synthetic_data"]
